// authsvc reference client, the parts every page uses: base64url, WebAuthn JSON <-> browser
// objects, and calling the API. Plain JavaScript, no build step; web apps may copy it.
// Loaded before the page's own script, it defines window.authsvc.
"use strict";

window.authsvc = (() => {
  // --- reusable: base64url ---------------------------------------------------------------
  const b64url = {
    encode(buffer) {
      const bytes = new Uint8Array(buffer);
      let binary = "";
      for (const byte of bytes) binary += String.fromCharCode(byte);
      return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    },
    decode(text) {
      const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
      const padded = base64 + "===".slice((base64.length + 3) % 4);
      const binary = atob(padded);
      const bytes = new Uint8Array(binary.length);
      for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
      return bytes.buffer;
    },
  };

  // --- reusable: WebAuthn JSON <-> browser objects ---------------------------------------
  // Browsers with WebAuthn Level 3 parse the server's JSON themselves; the fallbacks do the
  // same by hand for older ones.
  const hasJsonParsers = () =>
    typeof PublicKeyCredential !== "undefined" &&
    typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function";

  function creationOptionsFromJSON(json) {
    if (hasJsonParsers()) return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    return {
      ...json,
      challenge: b64url.decode(json.challenge),
      user: { ...json.user, id: b64url.decode(json.user.id) },
      excludeCredentials: (json.excludeCredentials || []).map((c) => ({
        ...c, id: b64url.decode(c.id),
      })),
    };
  }

  function requestOptionsFromJSON(json) {
    if (hasJsonParsers()) return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    return {
      ...json,
      challenge: b64url.decode(json.challenge),
      allowCredentials: (json.allowCredentials || []).map((c) => ({
        ...c, id: b64url.decode(c.id),
      })),
    };
  }

  function credentialToJSON(credential) {
    if (typeof credential.toJSON === "function") return credential.toJSON();
    const r = credential.response;
    const json = {
      id: credential.id,
      rawId: b64url.encode(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: credential.getClientExtensionResults(),
      response: { clientDataJSON: b64url.encode(r.clientDataJSON) },
    };
    if (r.attestationObject) {
      json.response.attestationObject = b64url.encode(r.attestationObject);
      json.response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
    } else {
      json.response.authenticatorData = b64url.encode(r.authenticatorData);
      json.response.signature = b64url.encode(r.signature);
      if (r.userHandle) json.response.userHandle = b64url.encode(r.userHandle);
    }
    return json;
  }

  async function createCredential(optionsJSON) {
    const publicKey = creationOptionsFromJSON(optionsJSON);
    return credentialToJSON(await navigator.credentials.create({ publicKey }));
  }

  async function getCredential(optionsJSON) {
    const { challenge_id: _ignored, ...options } = optionsJSON;
    const publicKey = requestOptionsFromJSON(options);
    return credentialToJSON(await navigator.credentials.get({ publicKey }));
  }

  // --- reusable: the API -----------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem, retryAfter = null) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.code = problem.code || "http_error";
      this.problem = problem;
      this.retryAfter = retryAfter; // seconds, from a 429's or a 503's Retry-After
    }
  }

  // Retry-After in seconds (RFC 9110 allows seconds or an HTTP date), or null.
  function retryAfter(response) {
    const value = response.headers.get("Retry-After");
    if (!value) return null;
    const when = /^\d+$/.test(value.trim())
      ? Number(value)
      : (Date.parse(value) - Date.now()) / 1000;
    return Number.isFinite(when) ? Math.max(1, Math.ceil(when)) : null;
  }

  // The refusals every page words alike: too many attempts, a service busy or unreachable,
  // an answer that is no problem+json (a proxy's error page), and no answer at all (status 0:
  // the network or the server is down). null for the others.
  function refusal(error) {
    if (!(error instanceof ApiError)) return null;
    if (error.status === 0) {
      return "The service could not be reached. Check your connection, then try again.";
    }
    const seconds = error.retryAfter;
    const wait = seconds
      ? `Try again in ${seconds} ${seconds === 1 ? "second" : "seconds"}.`
      : "Try again later.";
    if (error.status === 429) return `Too many attempts. ${wait}`;
    if (error.status === 503) return `The service is busy or unavailable right now. ${wait}`;
    if (!error.problem.code) return `The server could not answer (HTTP ${error.status}). ${wait}`;
    return null;
  }

  // One API call; a problem+json answer becomes an ApiError.
  async function call(method, path, body, bearer = null) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      throw new ApiError(0, { detail: "No answer from the service" }); // fetch's network error
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON: an error page of a proxy in front, or a body cut short.
      throw new ApiError(response.ok ? 502 : response.status, {}, retryAfter(response));
    }
    if (!response.ok) {
      const problem = data && typeof data === "object" ? data : {};
      throw new ApiError(response.status, problem, retryAfter(response));
    }
    return data;
  }

  // --- the page's status line, and its actions one at a time ----------------------------
  function setStatus(message, kind = "ok") {
    const status = document.getElementById("status");
    status.textContent = message;
    status.className = message ? kind : "";
  }

  // action(handler): an event listener that runs one handler at a time and shows a failure
  // in the status line, as describe(error) words it.
  function actions(describe) {
    let busy = false;
    return (handler) => async (event) => {
      if (event) event.preventDefault();
      if (busy) return;
      busy = true;
      try {
        await handler(event);
      } catch (error) {
        setStatus(describe(error), "error");
      } finally {
        busy = false;
      }
    };
  }

  return {
    b64url, createCredential, getCredential, ApiError, call, refusal, setStatus, actions,
  };
})();
