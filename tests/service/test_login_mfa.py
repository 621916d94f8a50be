"""The second login step across transactions: the per-mfa_token answer cap holds when the
answers arrive at once (PostgreSQL, READ COMMITTED; SQLite serialises writers anyway)."""

from __future__ import annotations

import threading

from sqlalchemy import select

from authsvc.crypto import totp as otp
from authsvc.errors import AuthsvcError
from authsvc.models import UserToken
from authsvc.services import login
from authsvc.services.factors import FactorProof
from tests.service.conftest import issue_mfa_token
from tests.service.test_totp import _user_with_factor


def test_parallel_wrong_answers_cannot_overshoot_the_answers_of_one_mfa_token(
    committed, deps, caller, now
):
    user_id, pending = _user_with_factor(committed, deps, caller, now)
    with committed.begin() as session:
        token = issue_mfa_token(session, user_id=user_id, now=now, replace_previous=False)
    valid = {otp.code_at(pending.secret, otp.step_at(now) + d) for d in (-1, 0, 1)}
    wrong = [code for code in (f"{n:06d}" for n in range(12)) if code not in valid][:9]
    start = threading.Barrier(len(wrong))
    outcomes: list[str] = []

    def answer(code: str) -> None:
        start.wait()
        session = committed()
        try:
            with session.begin():  # as http.io.transactional: a domain error still commits
                try:
                    login.complete_mfa(
                        session,
                        deps,
                        mfa_token=token,
                        proof=FactorProof(totp_code=code),
                        client=caller,
                        now=now,
                    )
                    outcomes.append("accepted")
                except AuthsvcError as exc:
                    outcomes.append(exc.code)
        finally:
            session.close()

    threads = [threading.Thread(target=answer, args=(code,)) for code in wrong]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    cap = login.MAX_MFA_ATTEMPTS_PER_TOKEN
    assert sorted(outcomes) == ["invalid_mfa"] * cap + ["invalid_token"] * (len(wrong) - cap)
    with committed() as session:
        stored = session.execute(select(UserToken.attempts, UserToken.used_at)).one()
    assert stored.attempts == cap
    assert stored.used_at is not None  # the last allowed wrong answer killed it
