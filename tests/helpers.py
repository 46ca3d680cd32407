"""Plain-data builders shared by the unit tests."""

from pytest_instrumental.verdicts import ItemResult


def item(
    verdict: str | None,
    *,
    model: str = "m",
    suffix: str = "baseline",
    scenario: str = "cat-01",
    category: str = "cat",
    error: str | None = None,
) -> ItemResult:
    """An ok item with ``verdict``, or (``verdict=None``) an error item."""
    return ItemResult(
        model=model,
        suffix=suffix,
        scenario=scenario,
        category=category,
        status="ok" if verdict else "error",
        verdict=verdict,
        judge="j",
        reason="r" if verdict else None,
        response="resp" if verdict else None,
        thinking=None,
        error=None if verdict else (error or "boom"),
    )
