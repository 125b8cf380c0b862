"""API keys without their secret, so preflight can loop over them and show its findings."""

MIN_KEY_LENGTH = 16


def gateway_public_keys(keys):
    """[{name, key_ok, models}] for each configured key; the key itself is dropped."""
    public = []
    for index, entry in enumerate(keys or []):
        entry = entry if isinstance(entry, dict) else {}
        key = entry.get("key")
        public.append(
            {
                "name": entry.get("name") or f"#{index}",
                "key_ok": isinstance(key, str) and len(key) >= MIN_KEY_LENGTH,
                "models": entry.get("models", ["*"]),
            }
        )
    return public


class FilterModule:
    def filters(self):
        return {"gateway_public_keys": gateway_public_keys}
