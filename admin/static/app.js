// User API Keys: the admin page. Plain JavaScript, no build step, no inline
// script (the page is served with script-src 'self').
"use strict";

(() => {
  const TOKEN = "rpa-admin-key";
  const PRIV = {
    open: "user_management.open",
    admin: "user_management.admin",
    create: "user_api_key.create",
    edit: "user_api_key.edit",
    remove: "user_api_key.delete",
  };
  const LABEL = {
    [PRIV.open]: "User Management Open",
    [PRIV.admin]: "User Management Administration",
    [PRIV.create]: "User API Key Create",
    [PRIV.edit]: "User API Key Edit",
    [PRIV.remove]: "User API Key Delete",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    me: null,
    keys: [],
    users: [],
    editing: null, // the key being edited, or null when creating
    removing: null,
    disabling: null,
    returnFocus: null,
    auditNext: null,
  };

  // API ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(problem, status) {
      super(problem.detail || problem.title || `The request failed with status ${status}.`);
      this.problem = problem;
      this.status = status;
    }
  }

  async function api(method, path, body, token = sessionStorage.getItem(TOKEN)) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store", credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError({
        title: "Network error",
        detail: "The admin API cannot be reached. Check the connection and try again.",
      }, 0);
    }
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    let data = null;
    if (type.includes("json")) {
      try { data = await response.json(); } catch (err) { data = null; }
    }
    if (!response.ok) {
      const problem = data && typeof data === "object" ? data : {
        title: response.statusText || "Error",
        detail: `The server answered ${response.status} without details.`,
      };
      if (!problem.request_id) problem.request_id = response.headers.get("X-Request-ID");
      throw new ApiError(problem, response.status);
    }
    return data;
  }

  // Messages -----------------------------------------------------------

  function showError(err, context) {
    const problem = err instanceof ApiError ? err.problem : { title: "Error", detail: String(err) };
    $("banner-title").textContent = context ? `${context}: ${problem.title || "Error"}` : (problem.title || "Error");
    $("banner-detail").textContent = problem.detail || "";
    const meta = [];
    if (err instanceof ApiError && err.status) meta.push(`HTTP ${err.status}`);
    if (problem.request_id) meta.push(`Request ID ${problem.request_id}`);
    $("banner-meta").textContent = meta.join(" · ");
    $("banner").hidden = false;
  }

  function clearError() { $("banner").hidden = true; }

  let toastTimer = 0;
  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => el.classList.remove("show"), 3500);
  }

  // Formatting ---------------------------------------------------------

  const dateTime = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: "UTC",
  });
  const when = (iso) => (iso ? `${dateTime.format(new Date(iso))} UTC` : "Never");
  const dayOf = (date) => date.toISOString().slice(0, 10);
  const daysUntil = (iso) => (new Date(iso).getTime() - Date.now()) / 86400000;

  function can(privilege) {
    return Boolean(state.me && state.me.privileges.includes(privilege));
  }

  function missing(...privileges) {
    const lacking = privileges.filter((p) => !can(p));
    if (!lacking.length) return "";
    const names = lacking.map((p) => LABEL[p]).join(" and ");
    return `Requires the ${names} privilege${lacking.length > 1 ? "s" : ""}.`;
  }

  // Sign-in ------------------------------------------------------------

  async function start() {
    const token = sessionStorage.getItem(TOKEN);
    try {
      // Without a token this succeeds only behind a trusted SSO proxy.
      const me = await api("GET", "api/me", undefined, token);
      await enter(me);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        if (token) {
          sessionStorage.removeItem(TOKEN);
          showSignIn(err.problem.detail);
        } else {
          showSignIn("");
        }
      } else {
        showSignIn("");
        showError(err, "Could not load your account");
      }
    }
  }

  function showSignIn(message) {
    state.me = null;
    $("account").hidden = true;
    for (const view of VIEWS) $(`${view}-view`).hidden = true;
    $("signin").hidden = false;
    const error = $("signin-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("signin-key").setAttribute("aria-invalid", message ? "true" : "false");
    $("signin-key").value = "";
    $("signin-key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    clearError();
    const input = $("signin-key");
    const key = input.value.trim();
    const error = $("signin-error");
    if (!key) {
      error.textContent = "Paste your API key to sign in.";
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    $("signin-submit").disabled = true;
    try {
      const me = await api("GET", "api/me", undefined, key);
      sessionStorage.setItem(TOKEN, key);
      input.value = "";
      await enter(me);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        error.textContent = err.problem.detail;
        error.hidden = false;
        input.setAttribute("aria-invalid", "true");
        input.focus();
      } else {
        showError(err, "Sign-in failed");
      }
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN);
    clearError();
    showSignIn("");
  }

  async function enter(me) {
    state.me = me;
    $("signin").hidden = true;
    $("signin-error").hidden = true;
    $("account").hidden = false;
    $("account-name").textContent = me.name;
    $("account-avatar").textContent = (me.name || me.id).slice(0, 1).toUpperCase();
    $("account-via").textContent = me.authenticated_by === "sso"
      ? `${me.id} · single sign-on`
      : `${me.id} · API key`;
    $("sign-out").hidden = me.authenticated_by === "sso";

    const admin = can(PRIV.admin) && can(PRIV.open);
    $("tabs").hidden = !admin;
    $("user-filter-wrap").hidden = !admin;
    const create = $("create");
    const why = missing(PRIV.open, PRIV.create);
    create.disabled = Boolean(why);
    create.title = why;
    $("create-hint").textContent = why ? `You cannot create keys. ${why}` : "";
    $("create-hint").hidden = !why;
    showKeys();
    if (admin) await loadUsers();
    await loadKeys();
    $("main").focus({ preventScroll: true });
  }

  // Keys ---------------------------------------------------------------

  const VIEWS = ["keys", "users", "audit"];

  function showView(name) {
    for (const view of VIEWS) {
      $(`${view}-view`).hidden = view !== name;
      if (view === name) $(`tab-${view}`).setAttribute("aria-current", "page");
      else $(`tab-${view}`).removeAttribute("aria-current");
    }
  }

  function showKeys() { showView("keys"); }

  async function backToKeys() {
    // The button that was pressed is hidden now: focus goes to the heading.
    showKeys();
    $("keys-title").focus();
    await loadKeys();
  }

  async function loadUsers() {
    try {
      state.users = (await api("GET", "api/users")).items;
    } catch (err) {
      state.users = [];
      handle(err, "Could not load users");
      return;
    }
    const filter = $("user-filter");
    const chosen = filter.value;
    filter.replaceChildren(new Option("All users", ""));
    for (const user of state.users) {
      filter.append(new Option(`${user.name} (${user.id})`, user.id));
    }
    filter.value = chosen;
  }

  let listing = 0;
  async function loadKeys() {
    const list = $("key-list");
    list.setAttribute("aria-busy", "true");
    const user = $("user-filter").value;
    const query = user ? `?user_id=${encodeURIComponent(user)}` : "";
    // A slower, older answer (another filter) must not replace a newer one.
    const mine = ++listing;
    try {
      const items = (await api("GET", `api/keys${query}`)).items;
      if (mine !== listing) return;
      state.keys = items;
      clearError();
    } catch (err) {
      if (mine !== listing) return;
      state.keys = [];
      renderKeys();
      $("keys-empty").hidden = true;
      handle(err, "Could not list keys");
      return;
    } finally {
      list.removeAttribute("aria-busy");
    }
    renderKeys();
  }

  function renderKeys() {
    const list = $("key-list");
    const template = $("key-panel");
    list.replaceChildren();
    const active = state.keys.filter((k) => k.status === "active").length;
    $("keys-summary").textContent = state.keys.length
      ? `${state.keys.length} key${state.keys.length === 1 ? "" : "s"}, ${active} active.`
      : "Keys let other products start RPA processes as you.";
    for (const key of state.keys) {
      const item = template.content.firstElementChild.cloneNode(true);
      item.dataset.keyId = key.id;
      item.querySelector(".key-name").textContent = key.name;
      item.querySelector(".key-description").textContent = key.description;
      item.querySelector(".key-user").textContent = key.user_id;
      item.querySelector(".key-hint").textContent = `rpa_…${key.hint}`;
      item.querySelector(".key-created").textContent = when(key.created_at);
      item.querySelector(".key-expires").textContent = when(key.expires_at);
      item.querySelector(".key-used").textContent = when(key.last_used_at);
      const badge = item.querySelector(".badge");
      const soon = key.status === "active" && daysUntil(key.expires_at) <= 7;
      if (key.status === "expired") {
        badge.textContent = "Expired";
        badge.classList.add("badge-expired");
        item.classList.add("is-expired");
      } else if (soon) {
        badge.textContent = "Active · expires soon";
        badge.classList.add("badge-soon");
        item.classList.add("is-soon");
      } else {
        badge.textContent = "Active";
        badge.classList.add("badge-active");
      }
      const edit = item.querySelector(".key-edit");
      edit.setAttribute("aria-label", `Edit ${key.name}`);
      edit.title = missing(PRIV.edit) || "Edit";
      edit.disabled = !can(PRIV.edit);
      edit.addEventListener("click", () => openForm(key, edit));
      const remove = item.querySelector(".key-remove");
      remove.setAttribute("aria-label", `Remove ${key.name}`);
      remove.title = missing(PRIV.remove) || "Remove";
      remove.disabled = !can(PRIV.remove);
      remove.addEventListener("click", () => askRemove(key, remove));
      list.append(item);
    }
    $("keys-empty").hidden = state.keys.length > 0;
  }

  // The form: Create User API Key / Edit -----------------------------------

  function clearFieldErrors() {
    $("form-error").hidden = true;
    for (const field of ["user_id", "name", "description", "expires_at"]) {
      $(`e-${field}`).hidden = true;
      $(`e-${field}`).textContent = "";
    }
    for (const id of ["f-user", "f-name", "f-description", "f-expires"]) {
      $(id).removeAttribute("aria-invalid");
    }
  }

  function openForm(key, opener) {
    clearFieldErrors();
    state.editing = key;
    state.returnFocus = opener;
    const today = new Date();
    const max = new Date(today.getTime() + state.me.max_key_lifetime_days * 86400000);
    const expires = $("f-expires");
    expires.min = dayOf(today);
    expires.max = dayOf(max);

    const user = $("f-user");
    user.replaceChildren();
    const admin = can(PRIV.admin);
    if (key) {
      user.append(new Option(key.user_id, key.user_id));
      user.disabled = true;
    } else if (admin && state.users.length) {
      for (const u of state.users.filter((u) => !u.disabled)) {
        user.append(new Option(`${u.name} (${u.id})`, u.id));
      }
      user.value = $("user-filter").value || state.me.id;
      user.disabled = false;
    } else {
      user.append(new Option(`${state.me.name} (${state.me.id})`, state.me.id));
      user.disabled = true;
    }

    $("key-dialog-title").textContent = key ? "Edit User API Key" : "Create User API Key";
    $("key-submit").textContent = key ? "Save" : "OK";
    $("f-name").value = key ? key.name : "";
    $("f-description").value = key ? key.description : "";
    if (key) {
      expires.value = key.expires_at.slice(0, 10);
    } else {
      const month = new Date(today.getTime() + Math.min(90, state.me.max_key_lifetime_days) * 86400000);
      expires.value = dayOf(month);
    }
    $("key-dialog").showModal();
    (key ? expires : $("f-name")).focus();
  }

  function fieldError(field, text) {
    const ids = { user_id: "f-user", name: "f-name", description: "f-description", expires_at: "f-expires" };
    const target = $(`e-${field}`);
    if (!target) return false;
    target.textContent = text;
    target.hidden = false;
    $(ids[field]).setAttribute("aria-invalid", "true");
    $(ids[field]).focus();
    return true;
  }

  async function submitForm(event) {
    event.preventDefault();
    clearFieldErrors();
    const name = $("f-name").value.trim();
    const expires = $("f-expires").value;
    if (!name) { fieldError("name", "Enter a name for the key."); return; }
    if (!expires) { fieldError("expires_at", "Choose an expiration date."); return; }
    const submit = $("key-submit");
    submit.disabled = true;
    const key = state.editing;
    try {
      if (key) {
        const body = {};
        if (name !== key.name) body.name = name;
        if ($("f-description").value !== key.description) body.description = $("f-description").value;
        if (expires !== key.expires_at.slice(0, 10)) body.expires_at = expires;
        if (Object.keys(body).length) {
          await api("PATCH", `api/keys/${encodeURIComponent(key.id)}`, body);
          toast(`Saved “${name}”.`);
        }
        closeDialog($("key-dialog"));
        await loadKeys();
      } else {
        const body = { name, description: $("f-description").value, expires_at: expires };
        const user = $("f-user").value;
        if (user && user !== state.me.id) body.user_id = user;
        const created = await api("POST", "api/keys", body);
        $("key-dialog").close();
        showCreated(created);
        loadKeys();
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        closeDialog($("key-dialog"));
        return handle(err);
      }
      const problem = err instanceof ApiError ? err.problem : null;
      if (!(problem && problem.field && fieldError(problem.field, problem.detail))) {
        const box = $("form-error");
        box.textContent = problem ? `${problem.detail}${problem.request_id ? ` (Request ID ${problem.request_id})` : ""}` : String(err);
        box.hidden = false;
      }
    } finally {
      submit.disabled = false;
    }
  }

  // Key Created! ------------------------------------------------------------

  function showCreated(created) {
    const input = $("created-key");
    input.value = created.key;
    $("copy-status").textContent = "";
    $("created-dialog").showModal();
    $("copy-key").focus();
  }

  async function copyKey() {
    const input = $("created-key");
    try {
      await navigator.clipboard.writeText(input.value);
      $("copy-status").textContent = "Copied to the clipboard.";
    } catch (err) {
      input.focus();
      input.select();
      $("copy-status").textContent = "The browser refused clipboard access: the key is selected, press Ctrl+C to copy it.";
    }
  }

  function closeCreated() {
    $("created-key").value = "";
    closeDialog($("created-dialog"));
    // The key leaves the page with the dialog.
  }

  // Remove --------------------------------------------------------------

  function askRemove(key, opener) {
    state.removing = key;
    state.returnFocus = opener;
    $("remove-text").textContent =
      `Remove “${key.name}” (rpa_…${key.hint}) of ${key.user_id}? Integrations that use it stop working immediately. This cannot be undone.`;
    $("remove-dialog").showModal();
    $("remove-cancel").focus();
  }

  async function confirmRemove() {
    const key = state.removing;
    const button = $("remove-confirm");
    button.disabled = true;
    try {
      await api("DELETE", `api/keys/${encodeURIComponent(key.id)}`);
      state.returnFocus = $("create");
      closeDialog($("remove-dialog"));
      toast(`Removed “${key.name}”.`);
      await loadKeys();
    } catch (err) {
      closeDialog($("remove-dialog"));
      handle(err, `Could not remove “${key.name}”`);
    } finally {
      button.disabled = false;
    }
  }

  // Users ----------------------------------------------------------------

  async function showUsers() {
    showView("users");
    await loadUsers();
    renderUsers();
    $("users-title").focus();
  }

  function renderUsers() {
    const rows = $("user-rows");
    rows.replaceChildren();
    for (const user of state.users) {
      const tr = document.createElement("tr");
      tr.dataset.userId = user.id;
      const privileges = user.privileges.map((p) => LABEL[p] || p).join(", ") || "None";
      const cells = [user.id, user.name, privileges];
      for (const [index, text] of cells.entries()) {
        const td = document.createElement("td");
        td.textContent = text;
        if (index === 0) td.className = "mono";
        if (index === 2) td.className = "details";
        tr.append(td);
      }
      const status = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = `badge ${user.disabled ? "badge-expired" : "badge-active"}`;
      badge.textContent = user.disabled ? "Disabled" : "Active";
      status.append(badge);
      const actions = document.createElement("td");
      tr.append(status, actions);
      rows.append(tr);
      if (user.id === state.me.id) {
        // Disabling yourself is refused by the API: no button to try.
        actions.textContent = "You";
        actions.className = "muted";
        continue;
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = user.disabled ? "btn btn-quiet" : "btn btn-quiet btn-danger";
      button.textContent = user.disabled ? "Enable" : "Disable";
      button.setAttribute("aria-label", `${button.textContent} ${user.name} (${user.id})`);
      button.addEventListener("click", () => (
        user.disabled ? setDisabled(user, false, button) : askDisable(user, button)
      ));
      actions.append(button);
    }
  }

  function askDisable(user, opener) {
    state.disabling = user;
    state.returnFocus = opener;
    $("disable-text").textContent =
      `Disable ${user.name} (${user.id})? Every key of theirs stops working at once, everywhere. Enabling them again makes their keys work again.`;
    $("disable-dialog").showModal();
    $("disable-cancel").focus();
  }

  async function setDisabled(user, disabled, opener) {
    const button = disabled ? $("disable-confirm") : opener;
    button.disabled = true;
    try {
      await api("PATCH", `api/users/${encodeURIComponent(user.id)}`, { disabled });
      closeDialog($("disable-dialog"));
      toast(`${disabled ? "Disabled" : "Enabled"} ${user.name}.`);
      await loadUsers();
      renderUsers();
      const row = document.querySelector(`#user-rows tr[data-user-id="${CSS.escape(user.id)}"] button`);
      if (row) row.focus();
    } catch (err) {
      closeDialog($("disable-dialog"));
      handle(err, `Could not ${disabled ? "disable" : "enable"} ${user.name}`);
    } finally {
      button.disabled = false;
    }
  }

  // Audit trail ---------------------------------------------------------

  async function showAudit() {
    showView("audit");
    $("audit-rows").replaceChildren();
    state.auditNext = null;
    await loadAudit();
    $("audit-title").focus();
  }

  function describeChanges(entry) {
    if (entry.detail) return entry.detail;
    return Object.entries(entry.changes).map(([field, value]) => {
      if (value && typeof value === "object" && "to" in value) {
        return `${field}: ${JSON.stringify(value.from)} → ${JSON.stringify(value.to)}`;
      }
      return `${field}: ${JSON.stringify(value)}`;
    }).join("; ");
  }

  async function loadAudit() {
    const query = state.auditNext ? `&before=${encodeURIComponent(state.auditNext)}` : "";
    let page;
    try {
      page = await api("GET", `api/audit?limit=50${query}`);
    } catch (err) {
      handle(err, "Could not load the audit trail");
      return;
    }
    const rows = $("audit-rows");
    for (const entry of page.items) {
      const tr = document.createElement("tr");
      const cells = [
        entry.time.replace("T", " ").replace("Z", ""),
        entry.actor || "(anonymous)",
        entry.action,
        entry.outcome === "ok" ? "OK" : `Refused (${entry.status})`,
        entry.key_id || "",
        entry.user_id || "",
        describeChanges(entry),
        entry.client || "",
      ];
      cells.forEach((text, index) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (index === 3) td.className = entry.outcome === "ok" ? "ok" : "refused";
        if (index === 6) td.className = "details";
        if (index === 4) td.classList.add("mono");
        if (index === 1 && entry.actor_key_id) {
          // The API key the actor signed in with: what a leaked key did.
          const via = document.createElement("span");
          via.className = "via mono";
          via.textContent = `with key ${entry.actor_key_id}`;
          td.append(via);
        }
        tr.append(td);
      });
      rows.append(tr);
    }
    state.auditNext = page.next;
    $("audit-more").hidden = !page.next;
  }

  // Shared --------------------------------------------------------------

  function handle(err, context) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN);
      return showSignIn(`You were signed out: ${err.problem.detail}`);
    }
    showError(err, context);
  }

  function closeDialog(dialog) {
    if (dialog.open) dialog.close();
  }

  function restoreFocus() {
    // A dialog closing in favour of another (the form, then Key Created!)
    // leaves focus to the one that opened.
    if (document.querySelector("dialog[open]")) return;
    const target = state.returnFocus;
    state.returnFocus = null;
    if (target && document.contains(target) && !target.disabled) target.focus();
    else if (!$("create").disabled) $("create").focus();
  }

  function wire() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    $("banner-close").addEventListener("click", clearError);
    $("create").addEventListener("click", (e) => openForm(null, e.currentTarget));
    $("refresh").addEventListener("click", loadKeys);
    $("user-filter").addEventListener("change", loadKeys);
    $("key-form").addEventListener("submit", submitForm);
    for (const button of document.querySelectorAll("[data-close]")) {
      button.addEventListener("click", () => closeDialog(button.closest("dialog")));
    }
    $("copy-key").addEventListener("click", copyKey);
    $("created-close").addEventListener("click", closeCreated);
    $("created-dialog").addEventListener("cancel", () => { $("created-key").value = ""; });
    $("remove-cancel").addEventListener("click", () => closeDialog($("remove-dialog")));
    $("remove-confirm").addEventListener("click", confirmRemove);
    for (const id of ["key-dialog", "created-dialog", "remove-dialog", "disable-dialog"]) {
      $(id).addEventListener("close", restoreFocus);
    }
    $("tab-keys").addEventListener("click", () => { showKeys(); loadKeys(); });
    $("tab-audit").addEventListener("click", showAudit);
    $("tab-users").addEventListener("click", showUsers);
    $("users-back").addEventListener("click", backToKeys);
    $("disable-cancel").addEventListener("click", () => closeDialog($("disable-dialog")));
    $("disable-confirm").addEventListener("click", () => setDisabled(state.disabling, true));
    $("audit-back").addEventListener("click", backToKeys);
    $("audit-more").addEventListener("click", loadAudit);
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    start();
  });
})();
