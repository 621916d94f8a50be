// The pages mailed links open: /verify-email?token=... and /reset-password?token=...
// The token leaves the address bar (and the history) at once, and is sent only when the
// person acts: a link scanner that opens the page confirms and resets nothing.
"use strict";

(() => {
  const { getCredential, ApiError, call, refusal, setStatus, actions } = window.authsvc;
  const $ = (id) => document.getElementById(id);

  const token = new URLSearchParams(window.location.search).get("token") || "";
  window.history.replaceState(null, "", window.location.pathname);
  // Behind a proxy that serves authsvc under a path (AUTHSVC_PUBLIC_URL with one), the API is
  // under the same path as this page.
  const [, base = "", page] =
    window.location.pathname.match(/^(.*)\/(verify-email|reset-password)$/) || [];
  const api = (method, path, body) => call(method, `${base}${path}`, body);


  function describe(error) {
    const refused = refusal(error);
    if (refused) return refused;
    if (error instanceof ApiError && error.code === "invalid_token") {
      return "This link is invalid, expired or already used. Ask for a new one.";
    }
    if (error instanceof ApiError) return `${error.message} (${error.code})`;
    if (error instanceof PasswordsDiffer) return error.message;
    if (error && error.name === "NotAllowedError") {
      return "The browser or the security key refused, or the request timed out.";
    }
    return `Something went wrong: ${error && error.message ? error.message : error}`;
  }

  function finish(message) {
    for (const id of ["verify-view", "reset-view"]) $(id).hidden = true;
    $("done-view").hidden = false;
    setStatus(message);
  }

  const action = actions(describe);

  // --- /verify-email ---------------------------------------------------------------------
  async function verify() {
    await api("POST", "/v1/signup/verify", { token });
    finish(
      "Your email address is confirmed. Sign in with the password you chose; if a mail asks " +
        "you to choose one (the address was signed up twice), use its link first.",
    );
  }

  // --- /reset-password -------------------------------------------------------------------
  class PasswordsDiffer extends Error {
    constructor() {
      super("The two passwords differ: type the same new password twice.");
      this.name = "PasswordsDiffer";
    }
  }

  function newPassword() {
    const password = $("new-password").value;
    if (password !== $("new-password-again").value) throw new PasswordsDiffer();
    return password;
  }

  async function reset(extra = {}) {
    const body = { token, new_password: newPassword(), ...extra };
    try {
      await api("POST", "/v1/password/reset", body);
    } catch (error) {
      if (!(error instanceof ApiError) || error.code !== "mfa_required") throw error;
      const methods = error.problem.methods || [];
      $("reset-second-factor").hidden = false;
      $("reset-totp").hidden = !methods.includes("totp");
      $("reset-recovery").hidden = !methods.includes("recovery_code");
      $("reset-webauthn").hidden = !methods.includes("webauthn");
      setStatus("Give your second factor too, then set the password again.", "error");
      return;
    }
    $("new-password").value = "";
    $("new-password-again").value = "";
    finish("Your password is set, and every session of your account was signed out.");
  }

  async function resetWithCodes() {
    const totp = $("reset-totp-code").value.replace(/[\s-]+/g, "");
    const recovery = $("reset-recovery-code").value.trim();
    if (totp) return reset({ totp_code: totp });
    if (recovery) return reset({ recovery_code: recovery });
    return reset();
  }

  async function resetWithKey() {
    newPassword();
    const options = await api("POST", "/v1/password/reset/webauthn-options", { token });
    await reset({ webauthn: await getCredential(options) });
  }

  // --- the page --------------------------------------------------------------------------
  if (!token) {
    setStatus("This page needs the link from your email, whole.", "error");
  } else if (page === "verify-email") {
    $("verify-view").hidden = false;
    $("verify-submit").addEventListener("click", action(verify));
  } else if (page === "reset-password") {
    $("reset-view").hidden = false;
    $("reset-form").addEventListener("submit", action(resetWithCodes));
    $("reset-key").addEventListener("click", action(resetWithKey));
  }
})();
