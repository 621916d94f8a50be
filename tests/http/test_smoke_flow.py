def test_signup_verify_login_me(api, client):
    email = api.register("ada@example.com", "correct horse 42")
    tokens = api.tokens(email, "correct horse 42")
    response = client.get("/v1/me", headers=api.bearer(tokens["access_token"]))
    assert response.status_code == 200
    assert response.get_json()["email"] == email
