"""Command-line verbs: ``flask seed``, ``flask auth create-user``, ``flask auth token``."""

from __future__ import annotations

import datetime as dt
import random
import typing as t

import click
import sqlalchemy as sa
from flask import Flask
from flask.cli import AppGroup
from werkzeug.security import generate_password_hash

from flask_backend_patterns.cache import get_state as get_cache_state
from flask_backend_patterns.cache import namespace_of

from .extensions import db
from .indexing import reindex_all
from .models import Market
from .models import MARKET_STATUSES
from .models import new_id
from .models import User
from .services import AuthService

_WORDS = (
    "election bitcoin rain championship launch rate inflation merger final treaty summit "
    "record price vote storm release earnings season cup award mission tariff index "
    "court ruling strike outage transfer debut budget quarter"
).split()
DEMO_PASSWORD = "demo-password"


def _batches(total: int, size: int) -> t.Iterator[int]:
    done = 0
    while done < total:
        yield min(size, total - done)
        done += size


@click.command("seed")
@click.option("--markets", "n_markets", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--users", "n_users", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--seed", "rng_seed", type=int, default=None, help="Random seed, for repeatable data.")
def seed_command(n_markets: int, n_users: int, batch_size: int, rng_seed: int | None) -> None:
    """Fill the database with demo users and markets (bulk inserts).

    Demo users are user{i}@example.com with the password 'demo-password'.
    """
    rng = random.Random(rng_seed)
    password_hash = generate_password_hash(DEMO_PASSWORD)  # hashed once: hashing is slow by design
    now = dt.datetime.now(dt.UTC)
    start = db.session.scalar(sa.select(sa.func.count()).select_from(User)) or 0
    users = [
        {
            "id": new_id(),
            "email": f"user{start + i}@example.com",
            "name": f"Demo User {start + i}",
            "password_hash": password_hash,
            "role": "user",
            "created_at": now,
        }
        for i in range(n_users)
    ]
    db.session.execute(sa.insert(User), users)
    user_ids = [u["id"] for u in users]
    with click.progressbar(length=n_markets, label="Markets") as bar:
        for size in _batches(n_markets, batch_size):
            rows = []
            for _ in range(size):
                created = now - dt.timedelta(seconds=rng.randrange(0, 365 * 24 * 3600))
                words = rng.sample(_WORDS, 3)
                rows.append(
                    {
                        "id": new_id(),
                        "name": f"Will the {words[0]} {words[1]} {words[2]} happen?",
                        "description": f"Resolves yes if the {words[0]} {words[1]} {words[2]} happens.",
                        "status": rng.choice(MARKET_STATUSES),
                        "volume": round(rng.uniform(0, 1_000_000), 2),
                        "creator_id": rng.choice(user_ids),
                        "created_at": created,
                        "updated_at": created,
                        "version": 1,
                    }
                )
            db.session.execute(sa.insert(Market), rows)
            bar.update(size)
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE users, markets"))
    # Bulk inserts go around the cached repositories: drop what the cache holds of them.
    cache_state = get_cache_state()
    for model in (User, Market):
        cache_state.invalidate(namespace_of(model))
    click.echo(f"Seeded {n_users} users and {n_markets} markets.")
    click.echo("Run `flask search reindex` to make them searchable.")


auth_cli = AppGroup("auth", help="Users and tokens.")


@auth_cli.command("create-user")
@click.option("--email", required=True)
@click.option("--password", required=True, prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", default="user", show_default=True)
@click.option("--name", default=None, help="Display name [default: the email's local part].")
def create_user_command(email: str, password: str, role: str, name: str | None) -> None:
    """Create a user; prints the new user's id as the last word."""
    try:
        user = AuthService().create_user(email=email, password=password, role=role, name=name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--role") from None
    except sa.exc.IntegrityError:
        raise click.BadParameter(f"a user with email {email} exists already", param_hint="--email") from None
    click.echo(f"Created {user.role} {user.email}: {user.id}")


@auth_cli.command("token")
@click.option("--email", required=True)
@click.option(
    "--expires-in",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds [default: JWT_ACCESS_TOKEN_EXPIRES].",
)
def token_command(email: str, expires_in: int | None) -> None:
    """Print an access token for a user as the last word (no password asked: operators only)."""
    service = AuthService()
    user = service.find_user_by_email(email)
    if user is None:
        raise click.BadParameter(f"no user with email {email}", param_hint="--email")
    click.echo(service.tokens_for(user, expires_in=expires_in)["access_token"])


search_cli = AppGroup("search", help="The semantic search index.")


@search_cli.command("reindex")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
def reindex_command(batch_size: int) -> None:
    """Embed every market again (after `flask seed`, SQL imports or a change of embedder)."""
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Market)) or 0
    with click.progressbar(length=total, label="Indexing markets") as bar:
        done = reindex_all(batch_size=batch_size, progress=bar.update)
    click.echo(f"Indexed {done} markets.")


def register_cli(app: Flask) -> None:
    """Add the example app's commands to ``flask``."""
    app.cli.add_command(seed_command)
    app.cli.add_command(auth_cli)
    app.cli.add_command(search_cli)
