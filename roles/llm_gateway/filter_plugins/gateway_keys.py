"""API keys without their secret, so preflight can loop over them and show its findings."""

MIN_KEY_LENGTH = 16


def gateway_public_keys(keys):
    """[{name, key_ok, models, budgets_ok}] for each configured key; the key itself is dropped."""
    public = []
    for index, entry in enumerate(keys or []):
        entry = entry if isinstance(entry, dict) else {}
        key = entry.get("key")
        public.append(
            {
                "name": entry.get("name") or f"#{index}",
                "key_ok": isinstance(key, str) and len(key) >= MIN_KEY_LENGTH,
                "models": entry.get("models", ["*"]),
                # token budgets: absent, or whole numbers >= 0 (0: none)
                "budgets_ok": all(
                    isinstance(entry.get(b, 0), int) and not isinstance(entry.get(b, 0), bool) and entry.get(b, 0) >= 0
                    for b in ("daily_tokens", "monthly_tokens")
                ),
            }
        )
    return public


class FilterModule:
    def filters(self):
        return {"gateway_public_keys": gateway_public_keys}
