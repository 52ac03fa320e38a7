"""The user service's own settings, typed and validated once in its ``__main__``.

The notifications consumer's ``USER_CONSUMER_*`` limits and the login throttle's
``USER_LOGIN_*`` numbers (services/user/throttle.py); an invalid value stops the process at
start with a ConfigError naming the variable.

    USER_LOGIN_SOURCE_BURST / _SOURCE_PER_SECOND     failed logins per source (20 at once, 0.2/s)
    USER_LOGIN_ACCOUNT_FREE_FAILURES                 wrong passwords before the backoff (5)
    USER_LOGIN_ACCOUNT_BACKOFF_SECONDS / _MAX_SECONDS   first lock and cap (1 s doubling, 300 s)
    USER_LOGIN_HASH_SHARE / _HASH_QUEUE              a source's derivations in the pool / waiting (1 / 8)
    USER_LOGIN_MAX_TRACKED                           sources and accounts remembered (100000 each)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.config import env_float, env_int
from services.common.messaging.consumer_settings import ConsumerSettings, consumer_settings_from_env
from services.user import notifications
from services.user.throttle import LoginLimits

SERVICE = "user"


@dataclass(frozen=True)
class UserSettings:
    """What only the user service reads."""

    notifications: ConsumerSettings
    login: LoginLimits = field(default_factory=LoginLimits)


def user_settings_from_env(environ: Mapping[str, str]) -> UserSettings:
    return UserSettings(
        notifications=consumer_settings_from_env(
            environ, SERVICE, notifications.CONSUMER, notifications.ROUTING_KEYS
        ),
        login=login_limits_from_env(environ),
    )


def login_limits_from_env(environ: Mapping[str, str]) -> LoginLimits:
    default = LoginLimits()
    return LoginLimits(
        source_burst=env_int(environ, "USER_LOGIN_SOURCE_BURST", default.source_burst),
        source_per_second=env_float(environ, "USER_LOGIN_SOURCE_PER_SECOND", default.source_per_second),
        account_free_failures=env_int(
            environ, "USER_LOGIN_ACCOUNT_FREE_FAILURES", default.account_free_failures
        ),
        account_backoff_seconds=env_float(
            environ, "USER_LOGIN_ACCOUNT_BACKOFF_SECONDS", default.account_backoff_seconds
        ),
        account_backoff_max_seconds=env_float(
            environ, "USER_LOGIN_ACCOUNT_BACKOFF_MAX_SECONDS", default.account_backoff_max_seconds
        ),
        hash_share=env_int(environ, "USER_LOGIN_HASH_SHARE", default.hash_share),
        hash_queue=env_int(environ, "USER_LOGIN_HASH_QUEUE", default.hash_queue),
        max_tracked=env_int(environ, "USER_LOGIN_MAX_TRACKED", default.max_tracked),
    )
