"""``flask auth create-user`` and ``flask auth token``."""

from __future__ import annotations

from werkzeug.security import check_password_hash

from example_app.models import User


def test_create_user_prints_the_id_last_and_hashes_the_password(app, db):
    result = app.test_cli_runner().invoke(
        args=[
            "auth",
            "create-user",
            "--email",
            "Mod@Example.com",
            "--password",
            "s3cret-pass",
            "--role",
            "moderator",
        ]
    )
    assert result.exit_code == 0, result.output
    user_id = result.output.split()[-1]
    user = db.session.get(User, user_id)
    assert (user.email, user.role, user.name) == ("mod@example.com", "moderator", "mod")
    assert user.password_hash != "s3cret-pass" and check_password_hash(user.password_hash, "s3cret-pass")
    assert "s3cret-pass" not in result.output


def test_create_user_refuses_unknown_roles_and_taken_emails(app):
    runner = app.test_cli_runner()
    base = ["auth", "create-user", "--email", "a@example.com", "--password", "pw-12345"]
    bad_role = runner.invoke(args=[*base, "--role", "emperor"])
    assert bad_role.exit_code != 0 and "unknown role" in bad_role.output
    assert runner.invoke(args=base).exit_code == 0
    taken = runner.invoke(args=base)
    assert taken.exit_code != 0 and "exists already" in taken.output


def test_token_prints_a_token_that_the_api_accepts(app):
    runner = app.test_cli_runner()
    runner.invoke(
        args=["auth", "create-user", "--email", "t@example.com", "--password", "pw-12345", "--name", "Tee"]
    )
    result = runner.invoke(args=["auth", "token", "--email", "t@example.com", "--expires-in", "60"])
    assert result.exit_code == 0, result.output
    token = result.output.split()[-1]
    response = app.test_client().get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.get_json()["data"]["email"] == "t@example.com"


def test_token_for_an_unknown_email_fails(app):
    result = app.test_cli_runner().invoke(args=["auth", "token", "--email", "nobody@example.com"])
    assert result.exit_code != 0 and "no user" in result.output
