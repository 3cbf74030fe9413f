// Load a TOML file into the submit form's text area (nothing leaves the browser until Submit).
"use strict";
document.getElementById("file").addEventListener("change", function (event) {
  const file = event.target.files[0];
  if (!file) { return; }
  file.text().then(function (text) { document.getElementById("source").value = text; });
});
