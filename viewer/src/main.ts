/** The reading workstation: a hash router over login, worklist, image study and ECG pages. */

import './styles.css';
import { api, logout, scheduleRefresh, token, username } from './api';
import { append, h } from './dom';
import { lang, onLangChange, setLang, t } from './i18n';
import { renderAlerts } from './pages/alerts';
import { renderLogin } from './pages/login';
import { renderReading } from './pages/reading';
import { renderWorklist } from './pages/worklist';
import { takeOpenedAt } from './timing';

const app = document.getElementById('app')!;
const header = h('header.topbar');
const main = h('main#page');
app.append(header, main);

let dispose: (() => void) | null = null;
let openedAt = performance.now();

// The time a study was asked for (a click or a key), so the viewer can report first-image time.
window.addEventListener(
  'hashchange',
  () => {
    openedAt = takeOpenedAt();
    performance.mark('rdx:open', { startTime: openedAt });
  },
  { capture: true },
);

// Critical results nobody has acknowledged yet, in the user's scope: a count beside the link.
const alertBadge = h('span.badge', { hidden: true });
async function countAlerts(): Promise<void> {
  if (!token()) return;
  const page = await api<{ total: number }>('GET', '/alerts', { query: { unacknowledged: true, limit: 1 } }).catch(() => null);
  alertBadge.hidden = !page?.total;
  alertBadge.textContent = page?.total ? String(page.total) : '';
  alertBadge.dataset.count = String(page?.total ?? 0);
}
window.addEventListener('rdx:alerts-changed', () => void countAlerts());

function drawHeader(): void {
  header.textContent = '';
  append(header, [
    h('a.brand', { href: '#/worklist' }, t('app')),
    token() ? h('a', { href: '#/worklist', name: 'nav-worklist' }, t('worklist')) : null,
    token() ? h('a', { href: '#/alerts', name: 'nav-alerts' }, [t('alerts'), alertBadge]) : null,
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
  // Not while a study opens: its first image should not share the hub with this request.
  if (page !== 'study' && page !== 'ecg') void countAlerts();
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
    case 'alerts':
      dispose = renderAlerts(main);
      break;
    default:
      dispose = renderWorklist(main);
  }
}

// Load and start the image viewer as soon as a reader is logged in, not when a study is opened
// nor when the page is idle: the 4 MB Cornerstone chunk takes ~0.5–1.5 s to fetch, parse and
// initialise on this kind of machine, which a reader who clicks the first row at once would wait.
function prewarmViewer(): void {
  if (!token()) return;
  void import('./imaging/viewer').catch(() => undefined);
  void import('./imaging/cornerstone').then((m) => m.initCornerstone()).catch(() => undefined);
}
window.addEventListener('hashchange', prewarmViewer, { once: true });
prewarmViewer();

onLangChange(route);
window.addEventListener('hashchange', route);
setLang(lang());
// A reload keeps the tokens in sessionStorage but not the renewal timer.
scheduleRefresh();
