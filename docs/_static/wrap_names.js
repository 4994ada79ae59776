// Long identifiers (`gaussian_observation(fisher='sampled')`,
// `multiscale_optax.kalman_learning_rates()`) get line-break opportunities
// after "_", ".", "(", ",", "=" and "/", so that on a narrow screen, or in
// the page's table of contents, they wrap between their parts instead of
// mid-word (custom.css breaks a part only where it alone is too wide).
// The text itself is unchanged: <wbr> adds nothing to a copy or a search.
(function () {
  'use strict';
  const SELECTOR = [
    '.bd-article code.literal span.pre',
    '.bd-article h1', '.bd-article h2', '.bd-article h3', '.bd-article h4',
    '.bd-article .sig-name', '.bd-article .sig-prename',
    '.bd-sidebar-secondary code span.pre',
    'table.indextable a',
  ].join(',');
  const BREAK_AFTER = /([_.(,=/])(?=[^\s_.(,=/)\]])/g;
  const MIN_LENGTH = 16;

  function addBreaks(element) {
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    const texts = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.nodeValue.length >= MIN_LENGTH &&
          !node.parentElement.closest('mjx-container, .math, script, style')) {
        texts.push(node);
      }
    }
    for (const text of texts) {
      const parts = text.nodeValue.split(BREAK_AFTER);
      if (parts.length < 2) continue;
      const fragment = document.createDocumentFragment();
      // split() with a capture group alternates text and delimiter.
      for (let i = 0; i < parts.length; i++) {
        if (!parts[i]) continue;
        fragment.appendChild(document.createTextNode(parts[i]));
        if (i % 2 === 1) fragment.appendChild(document.createElement('wbr'));
      }
      text.replaceWith(fragment);
    }
  }

  function run() {
    for (const element of document.querySelectorAll(SELECTOR)) {
      addBreaks(element);
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', run);
  } else {
    run();
  }
})();
