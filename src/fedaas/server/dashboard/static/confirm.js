// Ask before a destructive form (revoking a member) is sent.
"use strict";
document.querySelectorAll("form.revoke").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    const name = form.closest("tr").dataset.member;
    if (!window.confirm("Revoke member " + name + "? Its token stops working at once.")) {
      event.preventDefault();
    }
  });
});
