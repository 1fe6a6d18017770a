/** The reading workstation: a hash router over login, worklist, image study and ECG pages. */

import './styles.css';
import { logout, scheduleRefresh, token, username } from './api';
import { append, h } from './dom';
import { lang, onLangChange, setLang, t } from './i18n';
import { renderLogin } from './pages/login';
import { renderReading } from './pages/reading';
import { renderWorklist } from './pages/worklist';

const app = document.getElementById('app')!;
const header = h('header.topbar');
const main = h('main#page');
app.append(header, main);

let dispose: (() => void) | null = null;
let openedAt = performance.now();

// The time a study was asked for (a click or a key), so the viewer can report first-image time.
window.addEventListener('hashchange', () => (openedAt = performance.now()), { capture: true });

function drawHeader(): void {
  header.textContent = '';
  append(header, [
    h('a.brand', { href: '#/worklist' }, t('app')),
    token() ? h('a', { href: '#/worklist', name: 'nav-worklist' }, t('worklist')) : null,
    h('span.spacer'),
    h('button.lang', {
      name: 'lang',
      onclick: () => setLang(lang() === 'zh' ? 'en' : 'zh'),
    }, lang() === 'zh' ? 'English' : '中文'),
    token()
      ? h('span.user', [
          username() ?? '',
          ' ',
          h('button', { name: 'logout', onclick: () => { logout(); location.hash = '#/login'; } }, t('logout')),
        ])
      : null,
  ]);
}

function route(): void {
  try {
    dispose?.();
  } catch (error) {
    console.error('leaving the page failed', error); // never keeps the next page from opening
  }
  dispose = null;
  const hash = location.hash || '#/worklist';
  const [, page, arg] = hash.match(/^#\/([^/]+)\/?(.*)$/) ?? [];
  drawHeader();
  if (!token() && page !== 'login') {
    location.hash = '#/login';
    return;
  }
  document.body.dataset.page = page;
  switch (page) {
    case 'login':
      dispose = renderLogin(main);
      break;
    case 'study':
      dispose = renderReading(main, arg, 'images', openedAt);
      break;
    case 'ecg':
      dispose = renderReading(main, arg, 'ecg', openedAt);
      break;
    default:
      dispose = renderWorklist(main);
  }
}

// Warm the image viewer while the reader looks at the worklist: the 4 MB Cornerstone chunk,
// its init and the decoder workers would otherwise sit between the click and the first image.
function prewarmViewer(): void {
  if (!token()) return;
  const warm = () => import('./imaging/cornerstone').then((m) => m.initCornerstone()).catch(() => undefined);
  if ('requestIdleCallback' in window) window.requestIdleCallback(warm, { timeout: 2000 });
  else setTimeout(warm, 500);
}
window.addEventListener('hashchange', prewarmViewer, { once: true });
prewarmViewer();

onLangChange(route);
window.addEventListener('hashchange', route);
setLang(lang());
// A reload keeps the tokens in sessionStorage but not the renewal timer.
scheduleRefresh();
