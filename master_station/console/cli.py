"""`sealgw master serve` and `sealgw master user add|passwd|list`.

Passwords are never taken from the command line: from `$SEALGW_CONSOLE_PASSWORD`, from the first
line of standard input with `--password-stdin`, or typed twice at a prompt.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from gateway.errors import ConfigError, ExitCode

if TYPE_CHECKING:
    from master_station.ledger.models import Ledger

__all__ = ["PASSWORD_ENV", "register_console_commands"]

_log = logging.getLogger(__name__)

MAX_CONNECTIONS = 512  # uvicorn answers 503 past this many open connections and tasks
PASSWORD_ENV = "SEALGW_CONSOLE_PASSWORD"  # noqa: S105 (the variable's name, not a password)
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddBroker = Callable[[argparse.ArgumentParser], None]
Options = Callable[[argparse.Namespace], Any]


def register_console_commands(
    sub: SubParsers, *, default_ledger: str, add_broker: AddBroker, options: Options
) -> None:
    """Add `serve` and `user` to `sealgw master`."""
    serve = sub.add_parser("serve", help="the web console over the ledger")
    serve.add_argument("--ledger", default=default_ledger, help="SQLite path or postgresql:// DSN")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port (0: a free one)")
    serve.add_argument("--cert", type=Path, help="TLS certificate (PEM): serve HTTPS")
    serve.add_argument("--key", type=Path, help="TLS private key (PEM)")
    serve.add_argument("--master-dir", type=Path, help="sign tickets and revocations with it")
    serve.add_argument("--listen", action="store_true",
                       help="also run the listener in this process (needs --broker)")  # fmt: skip
    serve.add_argument("--plain-http", action="store_true",
                       help="allow plain HTTP off loopback (passwords and cookies in clear; "
                            "cookies without Secure): avoid, give --cert/--key")  # fmt: skip
    add_broker(serve)
    serve.set_defaults(handler=lambda args: _cmd_serve(args, options))

    user = sub.add_parser("user", help="console accounts")
    users = user.add_subparsers(title="user commands", metavar="COMMAND")
    add = users.add_parser("add", help="create an account")
    _add_user_options(add, default_ledger)
    add.add_argument("--role", required=True, choices=("admin", "district_manager", "auditor"))
    add.add_argument("--district", action="append", default=[], help="district (repeat)")
    add.set_defaults(handler=_cmd_user_add)
    passwd = users.add_parser("passwd", help="set an account's password (ends its sessions)")
    _add_user_options(passwd, default_ledger)
    passwd.set_defaults(handler=_cmd_user_passwd)
    listing = users.add_parser("list", help="list the accounts")
    listing.add_argument(
        "--ledger", default=default_ledger, help="SQLite path or postgresql:// DSN"
    )
    listing.set_defaults(handler=_cmd_user_list)


def _add_user_options(cmd: argparse.ArgumentParser, default_ledger: str) -> None:
    cmd.add_argument("--ledger", default=default_ledger, help="SQLite path or postgresql:// DSN")
    cmd.add_argument("--username", required=True)
    cmd.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")  # fmt: skip


# -- users ---------------------------------------------------------------------------------------


def _cmd_user_add(args: argparse.Namespace) -> int:
    from master_station.console.accounts import Accounts  # noqa: PLC0415 - CLI command body: loaded when it runs

    password = _password(args)
    with _ledger(args.ledger) as ledger:
        user = Accounts(ledger.db).add(args.username, password, args.role, args.district)  # type: ignore[attr-defined]
    scope = ", ".join(user.districts) or "every district"
    print(f"user {user.username}: {user.role.value} ({scope})")
    return ExitCode.OK


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    from master_station.console.accounts import Accounts  # noqa: PLC0415 - CLI command body: loaded when it runs

    password = _password(args)
    with _ledger(args.ledger) as ledger:
        Accounts(ledger.db).set_password(args.username, password)  # type: ignore[attr-defined]
    print(f"user {args.username}: password changed, sessions ended")
    return ExitCode.OK


def _cmd_user_list(args: argparse.Namespace) -> int:
    from master_station.console.accounts import Accounts  # noqa: PLC0415 - CLI command body: loaded when it runs

    with _ledger(args.ledger) as ledger:
        users = Accounts(ledger.db).users()  # type: ignore[attr-defined]
    for user in users:
        print(f"{user.username}\t{user.role.value}\t{','.join(user.districts) or '*'}")
    return ExitCode.OK


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env:
        return from_env
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise ConfigError("password", "the two passwords differ")
    return first


class _ledger:  # noqa: N801 - used as a context manager, like open()
    def __init__(self, target: str) -> None:
        from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs

        self.ledger = open_ledger(target)

    def __enter__(self) -> Ledger:
        return self.ledger

    def __exit__(self, *_exc: object) -> None:
        self.ledger.close()


# -- serve ---------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, options: Options) -> int:
    import uvicorn  # noqa: PLC0415 - CLI command body: loaded when it runs

    from master_station.authority import MasterAuthority  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.console.app import create_app  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if (args.cert is None) != (args.key is None):
        raise ConfigError("cert", "give both --cert and --key, or neither")
    if args.listen and not args.broker:
        raise ConfigError("listen", "--listen needs --broker")
    tls = args.cert is not None
    if not tls and not args.plain_http and not _loopback(args.host):
        raise ConfigError(
            "cert",
            f"--host {args.host} without --cert/--key would send passwords and session cookies"
            " in clear: give a certificate (or --plain-http)",
        )
    authority = MasterAuthority.open(args.master_dir) if args.master_dir else None
    broker = options(args) if args.broker else None
    port = args.port or _free_port(args.host)
    ledger = open_ledger(args.ledger)
    listener = _start_listener(args, broker, authority) if args.listen else None
    try:
        app = create_app(ledger, authority=authority, broker=broker, tls=tls,
                         secure_cookies=not args.plain_http)  # fmt: skip
        config = uvicorn.Config(
            app, host=args.host, port=port, log_level="warning", lifespan="on",
            ssl_certfile=str(args.cert) if tls else None,
            ssl_keyfile=str(args.key) if tls else None,
            timeout_graceful_shutdown=2, proxy_headers=False, server_header=False,
            limit_concurrency=MAX_CONNECTIONS, access_log=False,
        )  # fmt: skip
        scheme = "https" if tls else "http"
        print(f"console at {scheme}://{_url_host(args.host)}:{port}/ (ledger {ledger.location})",
              flush=True)  # fmt: skip
        uvicorn.Server(config).run()
    finally:
        if listener is not None:
            listener[0].stop()
            listener[1].close()
        ledger.close()
    return ExitCode.OK


def _start_listener(args: argparse.Namespace, broker: Any, authority: Any) -> tuple[Any, Any]:
    """The listener in this process, on its own ledger connection, keeping the rollups."""
    import dataclasses  # noqa: PLC0415 - CLI command body: loaded when it runs

    from master_station.ledger.factory import open_ledger  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.ledger.rollup import rollups_for  # noqa: PLC0415 - CLI command body: loaded when it runs
    from master_station.listener import MasterListener  # noqa: PLC0415 - CLI command body: loaded when it runs

    options = broker
    if authority is not None:
        options = dataclasses.replace(options, signer=authority.sign_command)
    ledger = open_ledger(args.ledger, trust=authority)
    listener = MasterListener(options, ledger, observer=rollups_for(ledger))
    listener.start(args.timeout)
    print(f"listening as {listener.client_id} on {options.broker_url}", flush=True)
    return listener, ledger


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
