"""LienWatch edge agent: GNSS and CAN sources, on-device rules, batching and uplink."""

__all__: list[str] = []
