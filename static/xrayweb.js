// Live status: every element with data-poll re-fetches its fragment until the
// fragment carries data-terminal (succeeded, failed or cancelled), waiting as long
// as the fragment's data-poll-after says (ms; a second when it says nothing).
"use strict";
function pollStatus(box) {
  const url = box.dataset.poll;
  const tick = async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (response.ok) {
        box.innerHTML = await response.text();
      }
    } catch (error) {
      // A dropped connection is retried on the next tick.
    }
    if (!box.querySelector("[data-terminal]")) {
      setTimeout(tick, pollAfter(box));
    } else {
      document.querySelectorAll("#cancel").forEach((button) => button.remove());
    }
  };
  if (!box.querySelector("[data-terminal]")) {
    setTimeout(tick, pollAfter(box));
  }
}
function pollAfter(box) {
  const hint = box.querySelector("[data-poll-after]");
  const ms = hint ? Number(hint.dataset.pollAfter) : NaN;
  return Number.isFinite(ms) && ms >= 250 ? ms : 1000;
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(pollStatus);
});
