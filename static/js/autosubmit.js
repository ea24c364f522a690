/* A <select data-autosubmit> submits its form as soon as it changes (the runs page's status
 * filter). A file, not an onchange="" attribute: the Content-Security-Policy runs no inline code. */
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select.matches && select.matches("select[data-autosubmit]") && select.form) select.form.submit();
  });
})();
