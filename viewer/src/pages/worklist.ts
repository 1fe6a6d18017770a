/** The worklist: priority colours, SLA countdown, filters, live updates by server-sent events. */

import { api, personName, queryString, token, type WorklistEntry, type WorklistPage } from '../api';
import { clear, h, toast } from '../dom';
import { locale, t } from '../i18n';
import { noteOpen } from '../timing';

/** Image studies to prefetch; the module (with Cornerstone) loads when first needed. */
function prefetchImages(uids: string[], first = false): void {
  if (!uids.length) return;
  import('../imaging/prefetch').then((m) => m.prefetch(uids, first)).catch(() => undefined);
}

const ORDER_KEY = 'rdx.worklist.order';
const FILTER_KEY = 'rdx.worklist.filters';

interface Filters {
  status: string; // 'open' | 'signed' | 'all' | one status
  priority: string;
  modality: string;
  patient: string;
}

const OPEN = ['unread', 'claimed', 'drafted'];

function loadFilters(): Filters {
  const saved = sessionStorage.getItem(FILTER_KEY);
  const base: Filters = { status: 'open', priority: '', modality: '', patient: '' };
  return saved ? { ...base, ...JSON.parse(saved) } : base;
}

/** What a study opens as: the ECG page for waveforms, the image viewer otherwise. */
export function studyRoute(item: { study_uid: string; modality: string | null }): string {
  return item.modality === 'ECG' ? `#/ecg/${item.study_uid}` : `#/study/${item.study_uid}`;
}

/** The study after ``uid`` in the order the worklist last showed (for the N shortcut). */
export function nextStudy(uid: string): string | null {
  const order: { study_uid: string; modality: string | null }[] = JSON.parse(
    sessionStorage.getItem(ORDER_KEY) ?? '[]',
  );
  const at = order.findIndex((o) => o.study_uid === uid);
  const next = order.slice(at + 1).find((o) => o.study_uid !== uid);
  return next ? studyRoute(next) : null;
}

/** "剩余 1:23:45" / "已超时 0:05:00": time to the SLA due time. */
export function slaText(dueAt: string, now = Date.now()): { text: string; overdue: boolean; soon: boolean } {
  const ms = Date.parse(dueAt) - now;
  const abs = Math.abs(ms);
  const hours = Math.floor(abs / 3_600_000);
  const minutes = Math.floor((abs % 3_600_000) / 60_000);
  const seconds = Math.floor((abs % 60_000) / 1000);
  const clock = `${hours}:${String(minutes).padStart(2, '0')}:${String(seconds).padStart(2, '0')}`;
  return { text: ms < 0 ? `${t('overdue')} ${clock}` : clock, overdue: ms < 0, soon: ms >= 0 && ms < 15 * 60_000 };
}

function age(birth: string | null): string {
  if (!birth || birth.length < 4) return '';
  return `${new Date().getFullYear() - Number(birth.slice(0, 4))}`;
}

export function renderWorklist(root: HTMLElement): () => void {
  const filters = loadFilters();
  let items: WorklistEntry[] = [];
  let total = 0;
  let source: EventSource | null = null;
  let reloadTimer: number | undefined;

  const liveBadge = h('span.live.off', t('offline'));
  const countText = h('span.count');
  const tbody = h('tbody');

  function select(name: keyof Filters, options: [string, string][]): HTMLSelectElement {
    const el = h(
      'select',
      {
        name,
        onchange: () => {
          filters[name] = el.value;
          reload();
        },
      },
      options.map(([value, label]) => h('option', { value, selected: filters[name] === value }, label)),
    );
    return el;
  }

  const patientInput = h('input', {
    type: 'search',
    name: 'patient',
    placeholder: t('search'),
    value: filters.patient,
    onchange: () => {
      filters.patient = patientInput.value.trim();
      reload();
    },
  });

  const toolbar = h('div.filters', [
    h('label', [t('status'), ' ', select('status', [
      ['open', `${t('s_unread')}/${t('s_claimed')}/${t('s_drafted')}`],
      ['unread', t('s_unread')],
      ['claimed', t('s_claimed')],
      ['drafted', t('s_drafted')],
      ['signed', t('s_signed')],
      ['all', t('all')],
    ])]),
    h('label', [t('priority'), ' ', select('priority', [
      ['', t('all')],
      ['stat', t('p_stat')],
      ['urgent', t('p_urgent')],
      ['routine', t('p_routine')],
    ])]),
    h('label', [t('modality'), ' ', select('modality', [
      ['', t('all')],
      ['DX', 'DX'],
      ['CR', 'CR'],
      ['CT', 'CT'],
      ['ECG', 'ECG'],
    ])]),
    patientInput,
    h('button', { onclick: () => reload() }, t('refresh')),
    countText,
    liveBadge,
  ]);

  const table = h('table.worklist', [
    h('thead', h('tr', [
      t('priority'), t('patient'), t('patientId'), t('sexAge'), t('modality'), t('description'),
      t('origin'), t('received'), t('due'), t('status'), t('claimedBy'),
    ].map((label) => h('th', label)))),
    tbody,
  ]);

  clear(root);
  root.append(h('section.worklist-page', [toolbar, h('div.table-wrap', table)]));

  function query() {
    const status = filters.status === 'open' ? OPEN : filters.status === 'all' ? [] : [filters.status];
    return {
      status,
      priority: filters.priority || undefined,
      modality: filters.modality || undefined,
      patient: filters.patient || undefined,
      limit: 200,
    };
  }

  function row(item: WorklistEntry): HTMLTableRowElement {
    const sla = slaText(item.due_at);
    const tr = h(
      'tr',
      {
        className: `prio-${item.priority} status-${item.status}${item.overdue ? ' overdue' : ''}`,
        dataset: { uid: item.study_uid, status: item.status, modality: item.modality ?? '' },
        tabIndex: 0,
        onclick: (e: MouseEvent) => {
          noteOpen(e.timeStamp);
          location.hash = studyRoute(item);
        },
        onkeydown: (e: KeyboardEvent) => {
          if (e.key !== 'Enter') return;
          noteOpen(e.timeStamp);
          location.hash = studyRoute(item);
        },
        // The pointer on a row is the best hint of the next click: its image goes first.
        onmouseenter: () => item.modality !== 'ECG' && prefetchImages([item.study_uid], true),
      },
      [
        h('td', h('span.prio', t(`p_${item.priority}`))),
        h('td.name', personName(item.patient_name)),
        h('td', item.patient_id),
        h('td', [item.patient_sex ?? '', ' ', age(item.patient_birth_date)]),
        h('td', item.modality ?? ''),
        h('td', [item.study_description ?? '', item.ecg?.critical ? h('span.crit', ` ${t('critical')}`) : null]),
        h('td', item.origin),
        h('td', new Date(item.received_at).toLocaleString(locale())),
        h('td.sla', { dataset: { due: item.due_at }, className: `sla${sla.overdue ? ' late' : sla.soon ? ' soon' : ''}` },
          item.status === 'signed' ? '—' : sla.text),
        h('td.status', t(`s_${item.status}`)),
        h('td', item.claimed_by ?? ''),
      ],
    );
    return tr;
  }

  function draw(): void {
    clear(tbody);
    if (!items.length) tbody.append(h('tr', h('td.empty', { colSpan: 11 }, t('noItems'))));
    for (const item of items) tbody.append(row(item));
    prefetchImages(
      items
        .filter((i) => i.modality !== 'ECG' && i.status !== 'signed')
        .slice(0, 3)
        .map((i) => i.study_uid),
    );
    countText.textContent = `${t('total')} ${total} ${t('items')}`;
    sessionStorage.setItem(
      ORDER_KEY,
      JSON.stringify(items.filter((i) => i.status !== 'signed').map((i) => ({ study_uid: i.study_uid, modality: i.modality }))),
    );
  }

  async function reload(): Promise<void> {
    sessionStorage.setItem(FILTER_KEY, JSON.stringify(filters));
    try {
      const page = await api<WorklistPage>('GET', '/worklist', { query: query() });
      items = page.items;
      total = page.total;
      draw();
      root.dataset.loadedAt = String(Date.now());
    } catch (error) {
      toast(String((error as Error).message), 'error');
    }
  }

  // The SLA column counts down every second without asking the server.
  const ticker = window.setInterval(() => {
    for (const cell of tbody.querySelectorAll<HTMLElement>('td.sla[data-due]')) {
      if (cell.textContent === '—') continue;
      const sla = slaText(cell.dataset.due!);
      cell.textContent = sla.text;
      cell.className = `sla${sla.overdue ? ' late' : sla.soon ? ' soon' : ''}`;
    }
  }, 1000);

  // Live updates (HTML Living Standard §9.2); EventSource sends no headers, so the token rides in
  // the query. A change reloads the page of items, debounced, so the filters stay the server's.
  function connect(): void {
    source = new EventSource(`/api/v1/worklist/events${queryString({ access_token: token() })}`);
    source.onopen = () => {
      liveBadge.textContent = t('live');
      liveBadge.className = 'live on';
    };
    source.onerror = () => {
      liveBadge.textContent = t('offline');
      liveBadge.className = 'live off';
    };
    source.addEventListener('worklist', (event) => {
      const changed: { study_uid: string }[] = JSON.parse((event as MessageEvent).data).items;
      root.dataset.lastEvent = changed.map((c) => c.study_uid).join(',');
      window.clearTimeout(reloadTimer);
      reloadTimer = window.setTimeout(reload, 200);
    });
    source.addEventListener('alert', (event) => {
      const alerts = JSON.parse((event as MessageEvent).data).items as { patient_name: string | null; acknowledged: boolean }[];
      window.dispatchEvent(new Event('rdx:alerts-changed'));
      for (const alert of alerts.filter((a) => !a.acknowledged)) {
        toast(`${t('critical')}: ${personName(alert.patient_name)}`, 'error');
      }
    });
  }

  reload();
  connect();
  return () => {
    import('../imaging/prefetch').then((m) => m.stopPrefetch()).catch(() => undefined);
    window.clearInterval(ticker);
    window.clearTimeout(reloadTimer);
    source?.close();
  };
}
