// authsvc reference client: password login with a second factor, passkey login, and
// enrollment of security keys, passkeys and authenticator apps. Plain JavaScript, no build
// step. Web apps may copy it; what every page needs is in client.js.
"use strict";

(() => {
  const {
    b64url, createCredential, getCredential, ApiError, call, refusal, setStatus, actions,
  } = window.authsvc;

  const state = {
    access: null, refresh: null, mfaToken: null, totpFactorId: null, enrollmentToken: null,
    changeToken: null,
  };

  async function api(method, path, body, { auth = false, token = null } = {}) {
    return call(method, path, body, token || (auth ? state.access : null));
  }

  // A session that ended (signed out elsewhere, idle too long, its refresh token spent):
  // the page forgets it and asks for a sign-in, instead of showing an account it cannot
  // reach any more.
  class SessionEnded extends Error {
    constructor() {
      super(
        "Your session has ended (signed out elsewhere, or unused for too long). Sign in again.",
      );
      this.name = "SessionEnded";
    }
  }

  // Bearer calls refresh the access token once when it has expired.
  async function authed(method, path, body) {
    try {
      return await api(method, path, body, { auth: true });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      if (!state.refresh) throw sessionEnded();
      let pair;
      try {
        pair = await api("POST", "/v1/token/refresh", { refresh_token: state.refresh });
      } catch (refused) {
        if (refused instanceof ApiError && [400, 401].includes(refused.status)) {
          throw sessionEnded();
        }
        throw refused;
      }
      state.access = pair.access_token;
      state.refresh = pair.refresh_token;
      return api(method, path, body, { auth: true });
    }
  }

  function claims(accessToken) {
    const payload = accessToken.split(".")[1];
    return JSON.parse(new TextDecoder().decode(b64url.decode(payload)));
  }

  // --- the page --------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);


  function describe(error) {
    const again = error && error.startOver ? " Sign in again." : "";
    const refused = refusal(error);
    if (refused) return refused + again;
    if (error instanceof SessionEnded) return error.message;
    if (error instanceof ApiError && error.code === "invalid_token" && again) {
      return `This sign-in expired or had too many wrong answers.${again}`;
    }
    if (error instanceof ApiError && error.code === "reauthentication_required") {
      // Adding or removing a factor, new recovery codes or ending other sessions, after
      // AUTHSVC_REAUTH_WINDOW.
      return "This needs a recent sign-in: sign out and in again, then try within a few minutes.";
    }
    if (error instanceof ApiError) {
      const reason = error.problem.reason ? `, ${error.problem.reason}` : "";
      return `${error.problem.title || "Error"}: ${error.message} (${error.code}${reason})`;
    }
    if (error && error.name === "NotAllowedError") {
      return "The browser or the authenticator refused, or the request timed out.";
    }
    if (error && error.name === "InvalidStateError") {
      return "This authenticator is already registered to your account.";
    }
    return `Something went wrong: ${error && error.message ? error.message : error}`;
  }

  function show(view) {
    const views = [
      "login-view", "signup-view", "mfa-view", "change-view", "enroll-view", "account-view",
    ];
    for (const id of views) {
      $(id).hidden = id !== view;
    }
  }

  // Run a UI action: one at a time, its failure shown in the status line.
  const action = actions(describe);

  // The steps between the password and a session hang on a short-lived token (mfa_token,
  // enrollment_token, change_token). One that expired, ran out of attempts or was ended by a
  // rate limit is dead: the page starts over at the password instead of failing on. (Signed
  // in, as when the account view adds an app, there is nothing to start over.)
  const loginStep = (handler) => action(async (event) => {
    try {
      await handler(event);
    } catch (error) {
      const dead = error instanceof ApiError
        && (error.code === "invalid_token" || error.status === 429);
      if (dead && !state.access) {
        startOver();
        error.startOver = true;
      }
      throw error;
    }
  });

  function startOver() {
    Object.assign(state, { mfaToken: null, enrollmentToken: null, changeToken: null });
    closeTotpSetup();
    for (const id of ["password", "mfa-totp", "mfa-recovery", "new-password", "change-username"]) {
      $(id).value = "";
    }
    show("login-view");
  }

  async function afterLogin(result) {
    if (result.status === "authenticated") {
      state.access = result.access_token;
      state.refresh = result.refresh_token;
      state.mfaToken = null;
      state.enrollmentToken = null;
      $("password").value = "";
      await showAccount();
      setStatus("Signed in.");
    } else if (result.status === "mfa_required") {
      state.mfaToken = result.mfa_token;
      $("password").value = "";
      $("mfa-webauthn").hidden = !result.methods.includes("webauthn");
      $("mfa-totp-form").hidden = !result.methods.includes("totp");
      $("mfa-recovery-form").hidden = !result.methods.includes("recovery_code");
      show("mfa-view");
      setStatus("Password accepted. Prove the second factor.");
    } else if (result.status === "password_change_required") {
      state.mfaToken = null;
      state.changeToken = result.change_token;
      $("change-username").value = $("email").value;
      $("password").value = "";
      show("change-view");
      setStatus("Your password must be changed first. Choose a new one.");
    } else if (result.status === "mfa_enrollment_required") {
      state.enrollmentToken = result.enrollment_token;
      $("password").value = "";
      show("enroll-view");
      setStatus("Password accepted. Add a second factor to continue.");
    }
  }

  function showRecoveryCodes(codes) {
    if (!codes) return;
    $("recovery-codes-list").textContent = codes.join("\n");
    $("recovery-codes").hidden = false;
  }

  // Shown once: put away, they leave the page (hidden is not gone).
  function hideRecoveryCodes() {
    $("recovery-codes").hidden = true;
    $("recovery-codes-list").textContent = "";
  }

  // The enrollment routes take an access token or, in a forced enrollment (a login answered
  // mfa_enrollment_required), its enrollment token; with one, the last step is a login answer.
  function enrolling(token) {
    return (method, path, body) => (token
      ? api(method, path, body, { token }) : authed(method, path, body));
  }

  async function addKey(name, token) {
    const call = enrolling(token);
    const options = await call("POST", "/v1/me/mfa/webauthn/registration-options", { name });
    const credential = await createCredential(options);
    return call("POST", "/v1/me/mfa/webauthn", { credential, name });
  }

  // An authenticator app: one setup panel, shown under the button that opened it (the account
  // view's or the forced enrollment's), its pending factor confirmed with the same token.
  async function startTotp(button, token) {
    const pending = await enrolling(token)("POST", "/v1/me/mfa/totp", {
      name: "Authenticator app",
    });
    state.totpFactorId = pending.factor_id;
    const svg = new TextEncoder().encode(pending.qr_svg);
    $("totp-qr").src = `data:image/svg+xml;base64,${btoa(String.fromCharCode(...svg))}`;
    $("totp-secret").textContent = pending.secret;
    button.after($("totp-setup"));
    $("totp-setup").hidden = false;
    setStatus("Scan the code with your authenticator app, then enter the code it shows.");
  }

  // Hidden is not gone: a setup that is over or abandoned leaves no secret in the page.
  function closeTotpSetup() {
    state.totpFactorId = null;
    $("totp-setup").hidden = true;
    $("totp-secret").textContent = "";
    $("totp-qr").removeAttribute("src");
    $("totp-code").value = "";
  }

  // Signed out, or the session ended: hidden is not gone, and the next person at a shared
  // computer could read the recovery codes, a pending app's secret and the account's details
  // in the page.
  function forget() {
    Object.assign(state, {
      access: null, refresh: null, mfaToken: null, totpFactorId: null, enrollmentToken: null,
      changeToken: null,
    });
    hideRecoveryCodes();
    closeTotpSetup();
    $("account-email").textContent = "";
    $("account-amr").textContent = "";
    $("factor-list").replaceChildren();
    $("session-list").replaceChildren();
    $("password").value = "";
    show("login-view");
  }

  function sessionEnded() {
    forget();
    return new SessionEnded();
  }

  async function showAccount() {
    const me = await authed("GET", "/v1/me");
    $("account-email").textContent = me.email;
    $("account-amr").textContent = (claims(state.access).amr || []).join(" ");
    await listFactors(me);
    await listSessions();
    show("account-view");
  }

  // An API timestamp (ISO 8601, UTC) in the reader's language and time zone.
  function when(timestamp) {
    const date = new Date(timestamp);
    if (Number.isNaN(date.getTime())) return timestamp;
    return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // Each live session: its browser and address as the server saw them, the last refresh.
  async function listSessions() {
    const { sessions } = await authed("GET", "/v1/me/sessions");
    const list = $("session-list");
    list.replaceChildren();
    for (const session of sessions) {
      const item = document.createElement("li");
      item.dataset.sessionId = session.id;
      const here = session.current ? " (this browser)" : "";
      item.textContent = `${session.user_agent || "Unknown browser"} at ${session.ip || "an "
        + "unknown address"}, last active ${when(session.last_used_at)}${here}`;
      list.append(item);
    }
    $("logout-others").disabled = sessions.every((session) => session.current);
  }

  async function listFactors(me) {
    const list = $("factor-list");
    list.replaceChildren();
    let factors = null;
    try {
      const data = await authed("GET", "/v1/me/mfa");
      factors = Array.isArray(data) ? data : data.factors;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
    }
    if (!factors) {
      for (const method of me.mfa_methods) {
        const item = document.createElement("li");
        item.textContent = method;
        list.append(item);
      }
      return;
    }
    if (factors.length === 0) {
      const item = document.createElement("li");
      item.textContent = "None yet.";
      list.append(item);
    }
    for (const factor of factors) {
      const item = document.createElement("li");
      item.dataset.factorId = factor.id;
      const name = document.createElement("span");
      name.className = "factor-name";
      name.textContent = factor.name;
      const meta = document.createElement("span");
      meta.className = "meta";
      const used = factor.last_used_at ? `, last used ${when(factor.last_used_at)}` : "";
      // A passkey also signs in alone, without the password; other keys are a second factor.
      const kind =
        factor.type !== "webauthn"
          ? "app"
          : factor.passkey
            ? "passkey (also signs in without a password)"
            : "security key";
      meta.textContent = ` — ${kind}${used} `;
      const rename = document.createElement("button");
      rename.type = "button";
      rename.textContent = "Rename";
      rename.addEventListener("click", action(() => renameFactor(factor)));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.className = "remove";
      remove.addEventListener("click", action(() => removeFactor(factor)));
      item.append(name, meta, rename, " ", remove);
      list.append(item);
    }
  }

  async function renameFactor(factor) {
    const name = window.prompt("New name", factor.name);
    if (!name) return;
    await authed("PATCH", `/v1/me/mfa/${encodeURIComponent(factor.id)}`, { name });
    await showAccount();
    setStatus("Renamed.");
  }

  async function removeFactor(factor) {
    if (!window.confirm(`Remove "${factor.name}"?`)) return;
    await authed("DELETE", `/v1/me/mfa/${encodeURIComponent(factor.id)}`);
    await showAccount();
    setStatus("Removed.");
  }

  // --- actions ---------------------------------------------------------------------------
  $("password-form").addEventListener("submit", action(async () => {
    setStatus("Signing in…");
    const result = await api("POST", "/v1/login", {
      email: $("email").value, password: $("password").value,
    });
    await afterLogin(result);
  }));

  // A sign-up: the mailbox gets a link to confirm the address (or, for an address with an
  // account, a notice); the answer is the same either way, and so are the page's words.
  $("signup-open").addEventListener("click", () => {
    $("signup-email").value = $("email").value;
    $("password").value = "";
    show("signup-view");
    setStatus("");
  });

  $("signup-form").addEventListener("submit", action(async () => {
    const email = $("signup-email").value;
    await api("POST", "/v1/signup", { email, password: $("signup-password").value });
    $("signup-password").value = "";
    $("email").value = email;
    show("login-view");
    setStatus(`Check your mailbox: a link to confirm ${email} is on its way. Sign in once `
      + "you have confirmed it.");
  }));

  $("signup-cancel").addEventListener("click", () => {
    $("signup-password").value = "";
    show("login-view");
    setStatus("");
  });

  // A link to choose a new password, mailed to the address typed above. The answer is the
  // same whether or not the address has an account, and so are the page's words.
  $("forgot").addEventListener("click", action(async () => {
    const email = $("email").value.trim();
    if (!email) {
      setStatus("Type your email address above, then press \"Forgot your password?\".", "error");
      $("email").focus();
      return;
    }
    await api("POST", "/v1/password/forgot", { email });
    setStatus(`Check your mailbox: if ${email} has an account, a link to choose a new password `
      + "is on its way.");
  }));

  $("passkey-login").addEventListener("click", action(async () => {
    setStatus("Waiting for your passkey…");
    const options = await api("POST", "/v1/passkeys/login-options", {});
    const credential = await getCredential(options);
    const result = await api("POST", "/v1/passkeys/login", {
      challenge_id: options.challenge_id, credential,
    });
    await afterLogin(result);
  }));

  $("mfa-key").addEventListener("click", loginStep(async () => {
    setStatus("Waiting for your security key…");
    const options = await api("POST", "/v1/login/mfa/webauthn-options", {
      mfa_token: state.mfaToken,
    });
    const credential = await getCredential(options);
    await afterLogin(await api("POST", "/v1/login/mfa", {
      mfa_token: state.mfaToken, webauthn: credential,
    }));
  }));

  $("mfa-totp-form").addEventListener("submit", loginStep(async () => {
    const code = $("mfa-totp").value.replace(/[\s-]+/g, "");
    $("mfa-totp").value = "";
    await afterLogin(await api("POST", "/v1/login/mfa", {
      mfa_token: state.mfaToken, totp_code: code,
    }));
  }));

  $("mfa-recovery-form").addEventListener("submit", loginStep(async () => {
    const code = $("mfa-recovery").value.trim();
    $("mfa-recovery").value = "";
    await afterLogin(await api("POST", "/v1/login/mfa", {
      mfa_token: state.mfaToken, recovery_code: code,
    }));
  }));

  $("mfa-cancel").addEventListener("click", () => {
    state.mfaToken = null;
    show("login-view");
    setStatus("");
  });

  // The change_token of a login whose password must change (a breach response, a blocklisted
  // password): the new password ends every session, so the next step is a sign-in with it.
  $("change-form").addEventListener("submit", loginStep(async () => {
    setStatus("Changing your password…");
    await api("POST", "/v1/password/change", {
      change_token: state.changeToken, new_password: $("new-password").value,
    });
    state.changeToken = null;
    $("new-password").value = "";
    $("change-username").value = "";
    show("login-view");
    setStatus("Password changed. Sign in with your new password.");
  }));

  $("change-cancel").addEventListener("click", () => {
    state.changeToken = null;
    $("new-password").value = "";
    $("change-username").value = "";
    show("login-view");
    setStatus("");
  });

  $("add-key-form").addEventListener("submit", action(async () => {
    setStatus("Follow your browser's prompt to create the key…");
    const factor = await addKey($("key-name").value, null);
    await showAccount();
    showRecoveryCodes(factor.recovery_codes);
    const kind = factor.passkey ? "passkey (also signs in without a password)" : "security key";
    setStatus(`Added ${kind} "${factor.name}".`);
  }));

  $("enroll-key").addEventListener("click", loginStep(async () => {
    setStatus("Follow your browser's prompt to create the key…");
    const result = await addKey("Security key", state.enrollmentToken);
    await afterLogin(result);
    showRecoveryCodes(result.recovery_codes);
  }));

  $("enroll-totp").addEventListener("click", loginStep(async () => {
    await startTotp($("enroll-totp"), state.enrollmentToken);
  }));

  $("enroll-cancel").addEventListener("click", () => {
    state.enrollmentToken = null;
    closeTotpSetup();
    show("login-view");
    setStatus("");
  });

  $("add-totp").addEventListener("click", action(async () => {
    await startTotp($("add-totp"), null);
  }));

  $("totp-confirm-form").addEventListener("submit", loginStep(async () => {
    const code = $("totp-code").value.replace(/[\s-]+/g, "");
    $("totp-code").value = "";
    const token = state.enrollmentToken;
    const result = await enrolling(token)(
      "POST", `/v1/me/mfa/totp/${encodeURIComponent(state.totpFactorId)}/confirm`, { code },
    );
    closeTotpSetup();
    if (token) await afterLogin(result); else await showAccount();
    showRecoveryCodes(result.recovery_codes);
    if (!token || result.status === "authenticated") setStatus("Authenticator app added.");
  }));

  // Every other session ends (it takes a recent sign-in: describe() says so otherwise).
  $("logout-others").addEventListener("click", action(async () => {
    const { sessions_revoked: ended } = await authed("DELETE", "/v1/me/sessions");
    await listSessions();
    setStatus(`Signed out everywhere else (${ended} ${ended === 1 ? "session" : "sessions"}).`);
  }));

  $("recovery-codes-saved").addEventListener("click", hideRecoveryCodes);

  $("logout").addEventListener("click", action(async () => {
    const refresh = state.refresh;
    forget();
    try {
      if (refresh) await api("POST", "/v1/logout", { refresh_token: refresh });
    } catch (error) {
      // A refused token is a session that had ended already. Otherwise the page has let go of
      // the session's tokens, so there is nothing to try again with: say what that means.
      if (!(error instanceof ApiError) || ![400, 401].includes(error.status)) {
        setStatus("Signed out of this page only: the service could not be reached to end the "
          + "session, so it stays open until it expires unused.", "error");
        return;
      }
    }
    setStatus("Signed out.");
  }));

  if (typeof PublicKeyCredential === "undefined") {
    for (const id of ["passkey-login", "add-key", "enroll-key", "mfa-key"]) $(id).disabled = true;
    setStatus("This browser does not support security keys or passkeys.", "error");
  }
})();
