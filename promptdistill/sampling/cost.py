"""What the teacher's answers cost, online and through the Batch API (issue #15).

Prices are USD per million tokens. `--price-in/--price-out` give them; without them a few of
OpenAI's models have their list prices here (openai.com/api/pricing, standard tier, as listed
in 2025: check them, they change). The Batch API costs half the online price (OpenAI's batch
guide), which is why the summary shows both.
"""

from __future__ import annotations

BATCH_DISCOUNT = 0.5

# model -> (input, output), USD per million tokens, online
LIST_PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def list_price(model: str) -> tuple[float, float] | None:
    """The list price of `model`: its name, a dated snapshot of it (`gpt-4o-mini-2024-07-18`)
    or either behind a provider prefix (`openai/gpt-4o`); None for any other model."""
    name = model.rsplit("/", 1)[-1].lower()
    for known in sorted(LIST_PRICES, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            rest = name[len(known) :]
            # `gpt-4o-2024-08-06` is gpt-4o, but `gpt-4o-audio` is another model
            if not rest or rest[1:2].isdigit():
                return LIST_PRICES[known]
    return None


def prices(
    model: str, price_in: float | None, price_out: float | None
) -> tuple[float | None, float | None]:
    """The prices given, else the model's list price (a price given alone keeps the other at
    the list price, or at 0 for output)."""
    listed = list_price(model)
    if price_in is None and listed is not None:
        price_in = listed[0]
    if price_out is None and listed is not None:
        price_out = listed[1]
    if price_in is not None and price_out is None:
        price_out = 0.0
    return price_in, price_out


def cost_usd(input_tokens: int, output_tokens: int, price_in: float, price_out: float) -> float:
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


def cost_row(
    tokens: tuple[int, int],
    batch_tokens: tuple[int, int],
    price_in: float | None,
    price_out: float | None,
) -> tuple[str, str] | None:
    """The summary's cost line for this command's answers: `tokens` (input, output) asked
    online, `batch_tokens` through the Batch API, next to what the other way would cost."""
    if price_in is None or not any(tokens + batch_tokens):
        return None
    p_out = price_out or 0.0
    online = cost_usd(*tokens, price_in, p_out)
    batch = cost_usd(*batch_tokens, price_in, p_out) * BATCH_DISCOUNT
    n_in, n_out = tokens[0] + batch_tokens[0], tokens[1] + batch_tokens[1]
    used = f"{n_in} in + {n_out} out tokens at ${price_in:g}/${p_out:g} per M"
    if any(batch_tokens):
        all_online = cost_usd(n_in, n_out, price_in, p_out)
        shown = f"${online + batch:.4f} (all online: ${all_online:.4f}); {used}"
        return "cost (batch prices)", shown
    shown = f"${online:.4f} (by --batch-api: ${online * BATCH_DISCOUNT:.4f}); {used}"
    return "cost (online prices)", shown
