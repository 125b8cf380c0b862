"""Token usage of an answer, as the upstream reported it.

Non-streamed answers carry ``usage`` in their JSON body. A stream carries it only when asked
(``stream_options.include_usage``): the gateway asks on the client's behalf when the client did
not, and ``StreamUsage`` takes the usage event out again, so the client receives exactly the
stream it asked for and the gateway still knows the tokens.
"""

from __future__ import annotations

import json
import re

_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"\r?\n\r?\n")  # an SSE event ends with an empty line
_MAX_CARRY = 1024 * 1024  # an unfinished event held longer than this is passed on as it is


def usage_tokens(body: bytes) -> tuple[int, int] | None:
    """Prompt/completion tokens from a JSON response's ``usage`` without parsing the body:
    vLLM puts ``usage`` last, so search from the end."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    tail = body[i : i + 400]
    p = _PROMPT.search(tail)
    c = _COMPLETION.search(tail)
    return (int(p.group(1)) if p else 0, int(c.group(1)) if c else 0)


def ask_for_usage(obj: dict) -> bool:
    """Make a streamed request ask the upstream for usage. True when the gateway added the
    request (the usage event is then the gateway's, not to be passed on); False when the client
    asked for it itself, or sent ``stream_options`` that is not an object (the upstream judges)."""
    so = obj.get("stream_options")
    if so is None:
        obj["stream_options"] = {"include_usage": True}
        return True
    if not isinstance(so, dict) or so.get("include_usage") is True:
        return False
    obj["stream_options"] = {**so, "include_usage": True}
    return True


class StreamUsage:
    """Reads the usage event of a stream as it passes; with ``hide``, leaves it out.

    ``feed`` returns what to pass on of a chunk: events are passed on whole, so an event split
    across upstream chunks is held until its end (``_MAX_CARRY`` at most). Only an event that
    mentions ``"usage"`` is parsed.
    """

    __slots__ = ("hide", "carry", "tokens")

    def __init__(self, hide: bool) -> None:
        self.hide = hide
        self.carry = b""
        self.tokens: tuple[int, int] | None = None  # (prompt, completion) once the usage event passed

    def feed(self, data: bytes) -> bytes:
        if self.carry:
            data = self.carry + data
            self.carry = b""
        if data.endswith(b"\n\n") and b'"usage"' not in data:
            return data  # the common chunk: whole events, none of them the usage event
        end = 0
        for m in _EVENT_END.finditer(data):
            end = m.end()
        if end < len(data):
            if len(data) - end > _MAX_CARRY:
                end = len(data)  # not SSE as we know it: pass on, never hold a stream back
            else:
                self.carry = data[end:]
                data = data[:end]
        if b'"usage"' not in data:
            return data
        out, pos = [], 0
        for m in _EVENT_END.finditer(data):
            event = data[pos : m.end()]
            pos = m.end()
            if b'"usage"' in event and self._is_usage(event):
                continue
            out.append(event)
        out.append(data[pos:])
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held at the end of the stream (an unfinished last event)."""
        rest, self.carry = self.carry, b""
        return rest

    def _is_usage(self, event: bytes) -> bool:
        """Record the tokens of a usage event; True when it is to be left out."""
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return False
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self.tokens = (p if isinstance(p, int) else 0, c if isinstance(c, int) else 0)
        # the event the gateway asked for carries usage only; any other is the client's content
        return self.hide and obj.get("choices") == []
