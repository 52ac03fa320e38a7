"""Payment rules without I/O: validation, the decline boundary, replays and state moves."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mesh.errors import ConfigError
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.payment import domain
from services.payment.domain import Amount, Authorization, PaymentPolicy, PaymentState

EUR_12_50 = Amount("EUR", 12, 500_000_000)


def fields(error: InvalidArgument) -> set[str]:
    return {name for name, _ in error.violations}


def test_a_valid_authorization_is_in_minor_units() -> None:
    assert domain.validate_authorization("saga-1:payment", "o-1", "u-1", EUR_12_50) == Authorization(
        "saga-1:payment", "o-1", "u-1", 1250, "EUR"
    )


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_authorization("", "", "", None)
    assert fields(raised.value) == {"payment_id", "order_id", "user_id", "amount"}


@pytest.mark.parametrize("payment_id", ["p", "p-1", "saga.42:step_1", "A" * 128, "0"])
def test_payment_ids_that_are_accepted(payment_id: str) -> None:
    domain.validate_payment_id(payment_id)


@pytest.mark.parametrize("payment_id", ["", "A" * 129, "-p", ".p", "has space", "a/b", "caf\u00e9", "p\n"])
def test_payment_ids_that_are_refused(payment_id: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_payment_id(payment_id)
    assert fields(raised.value) == {"payment_id"}


@pytest.mark.parametrize(
    ("amount", "minor"),
    [
        (Amount("EUR", 0, 10_000_000), 1),
        (Amount("JPY", 1000, 0), 100_000),
        (Amount("USD", 5, 990_000_000), 599),
    ],
)
def test_amounts_that_are_accepted(amount: Amount, minor: int) -> None:
    assert domain.validate_authorization("p", "o", "u", amount).amount_minor == minor


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (Amount("EUR", 0, 0), {"amount"}),  # zero
        (Amount("EUR", -1, 0), {"amount"}),  # negative
        (Amount("EUR", 0, -10_000_000), {"amount"}),  # negative cents
        (Amount("EUR", 1, -10_000_000), {"amount"}),  # mixed signs
        (Amount("EUR", 1, 5), {"amount.nanos"}),  # sub-cent
        (Amount("EUR", 1, 1_000_000_000), {"amount.nanos"}),  # nanos out of range
        (Amount("EUR", 10**14, 0), {"amount"}),  # beyond any real payment
        (Amount("eur", 1, 0), {"amount.currency_code"}),
        (Amount("", 1, 0), {"amount.currency_code"}),
        (Amount("EURO", 1, 0), {"amount.currency_code"}),
        (Amount("eu", 0, 1), {"amount.currency_code", "amount.nanos", "amount"}),
    ],
)
def test_amounts_that_are_refused(amount: Amount, expected: set[str]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_authorization("p", "o", "u", amount)
    assert fields(raised.value) == expected


def test_exactly_the_limit_passes() -> None:
    domain.check_limit(Authorization("p", "o", "u", 100_000, "EUR"), PaymentPolicy())


def test_one_cent_above_the_limit_is_declined() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        domain.check_limit(Authorization("p", "o", "u", 100_001, "EUR"), PaymentPolicy())
    assert raised.value.reason == "PAYMENT_DECLINED"
    assert raised.value.domain == "shop.payment"
    assert raised.value.metadata == {"amount_minor": "100001", "limit_minor": "100000", "currency": "EUR"}
    assert "1000.01 EUR is above the per-payment limit of 1000.00 EUR" in str(raised.value)


def test_a_custom_limit_moves_the_boundary() -> None:
    policy = PaymentPolicy(decline_above_minor=500)
    domain.check_limit(Authorization("p", "o", "u", 500, "EUR"), policy)
    with pytest.raises(FailedPrecondition):
        domain.check_limit(Authorization("p", "o", "u", 501, "EUR"), policy)


def test_policy_from_settings() -> None:
    assert domain.policy_from_settings({}) == PaymentPolicy(100_000)
    assert domain.policy_from_settings({"DECLINE_ABOVE_MINOR": " 2500 "}) == PaymentPolicy(2500)
    with pytest.raises(ConfigError, match="PAYMENT_DECLINE_ABOVE_MINOR must be an integer"):
        domain.policy_from_settings({"DECLINE_ABOVE_MINOR": "ten"})
    with pytest.raises(ConfigError, match="PAYMENT_DECLINE_ABOVE_MINOR must be >= 0"):
        domain.policy_from_settings({"DECLINE_ABOVE_MINOR": "-1"})


def test_a_replay_must_repeat_the_terms() -> None:
    original = Authorization("p", "o", "u", 1250, "EUR")
    domain.check_replay(original, Authorization("p", "o", "u", 1250, "EUR"))
    for changed in (
        Authorization("p", "o2", "u", 1250, "EUR"),
        Authorization("p", "o", "u2", 1250, "EUR"),
        Authorization("p", "o", "u", 1251, "EUR"),
        Authorization("p", "o", "u", 1250, "USD"),
    ):
        with pytest.raises(AlreadyExists):
            domain.check_replay(original, changed)


Decide = Callable[[PaymentState], bool]
A, C, V, R = PaymentState.AUTHORIZED, PaymentState.CAPTURED, PaymentState.VOIDED, PaymentState.REFUNDED


@pytest.mark.parametrize(
    ("decide", "state", "outcome"),
    [
        (domain.may_capture, A, True),
        (domain.may_capture, C, False),
        (domain.may_capture, R, False),
        (domain.may_capture, V, "PAYMENT_VOIDED"),
        (domain.may_void, A, True),
        (domain.may_void, V, False),
        (domain.may_void, C, "PAYMENT_CAPTURED"),
        (domain.may_void, R, "PAYMENT_CAPTURED"),
        (domain.may_refund, C, True),
        (domain.may_refund, R, False),
        (domain.may_refund, A, "PAYMENT_NOT_CAPTURED"),
        (domain.may_refund, V, "PAYMENT_NOT_CAPTURED"),
    ],
)
def test_state_moves(decide: Decide, state: PaymentState, outcome: bool | str) -> None:
    """True: move; False: return unchanged (a re-sent call); a reason: refused."""
    if isinstance(outcome, bool):
        assert decide(state) is outcome
    else:
        with pytest.raises(FailedPrecondition) as raised:
            decide(state)
        assert raised.value.reason == outcome


def test_format_minor() -> None:
    assert domain.format_minor(100_001, "EUR") == "1000.01 EUR"
    assert domain.format_minor(5, "USD") == "0.05 USD"
    assert domain.format_minor(-250, "JPY") == "-2.50 JPY"
