// The console's small amount of script: the list and an ingress' status update
// themselves, copy buttons, delete confirmation, and the form shows the fields of
// the chosen input and modes.
"use strict";

function showTimes(root) {
  root.querySelectorAll("time[data-ms]").forEach(el => {
    const when = new Date(Number(el.dataset.ms));
    el.dateTime = when.toISOString();
    el.textContent = when.toLocaleString();
  });
}

// an element with data-refresh="<url>" is re-rendered by the node every 2 s; an
// unchanged one costs a 304 and leaves the page (focus, selection) alone
function refreshing() {
  const stamp = document.getElementById("updated");
  document.querySelectorAll("[data-refresh]").forEach(part => {
    let shown = "";  // the ETag of what is in the page: the node answers 304 to it
    async function refresh() {
      try {
        const reply = await fetch(part.dataset.refresh, {
          credentials: "same-origin", headers: shown ? {"If-None-Match": shown} : {}});
        if (reply.redirected || reply.status === 403) { location.reload(); return; }
        if (reply.status === 200) {
          const html = await reply.text();
          shown = reply.headers.get("ETag") || "";
          part.innerHTML = html;
          showTimes(part);
        } else if (reply.status !== 304) {
          return;
        }
        if (stamp) stamp.textContent = "(last at " + new Date().toLocaleTimeString() + ")";
      } catch (e) { if (stamp) stamp.textContent = "(node unreachable, retrying)"; }
    }
    setInterval(refresh, 2000);
  });
}

function copyButtons() {
  document.querySelectorAll("button[data-copy]").forEach(button => {
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (e) {
        // no clipboard (plain HTTP on another host): select the text for Ctrl+C
        const code = button.parentElement.querySelector("code");
        const range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  });
}

function confirmDeletes() {
  document.querySelectorAll("form[data-confirm]").forEach(form => {
    form.addEventListener("submit", event => {
      if (!confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

function formModes() {
  const form = document.querySelector(".ingress-form");
  if (!form) return;
  function show() {
    const input = form.querySelector("#input_type").value;
    form.querySelector(".for-url").hidden = input !== "URL_INPUT";
    form.querySelector(".for-whip").hidden = input !== "WHIP_INPUT";
    for (const kind of ["video", "audio"]) {
      const mode = form.querySelector(`input[name=${kind}_mode]:checked`).value;
      const box = document.getElementById(kind);
      box.querySelector(".for-preset").hidden = mode !== "preset";
      box.querySelector(".for-custom").hidden = mode !== "custom";
    }
  }
  form.addEventListener("change", show);
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  showTimes(document);
  refreshing();
  copyButtons();
  confirmDeletes();
  formModes();
});
