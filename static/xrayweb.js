// Live status: every element with data-poll re-fetches its fragment each second
// until the fragment carries data-terminal (succeeded, failed or cancelled).
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
      setTimeout(tick, 1000);
    } else {
      document.querySelectorAll("#cancel").forEach((button) => button.remove());
    }
  };
  if (!box.querySelector("[data-terminal]")) {
    setTimeout(tick, 1000);
  }
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(pollStatus);
});
