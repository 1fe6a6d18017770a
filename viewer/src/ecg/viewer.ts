/** The ECG page body: the paper with its controls, calipers, and the preliminary analysis. */

import { api, type StudyDetail } from '../api';
import { clear, h, toast } from '../dom';
import { lang, t } from '../i18n';
import { ECG_CONFIRMED_EVENT } from '../report/panel';
import { type Caliper, ECGCanvas, type Leads } from './canvas';

type Analysis = Record<string, any>;

const MEASURES: [string, string, string][] = [
  ['heart_rate', 'heartRate', 'bpm'],
  ['pr_ms', 'PR', 'ms'],
  ['qrs_ms', 'QRS', 'ms'],
  ['qt_ms', 'QT', 'ms'],
  ['qtc_bazett_ms', 'QTc', 'ms'],
  ['axis_deg', 'axis', '°'],
];

function fmt(value: unknown): string {
  return typeof value === 'number' ? String(Math.round(value)) : '—';
}

/**
 * The machine's preliminary reading beside the cart's, and the reader's own column: the machine
 * values to accept as they are or to correct, stored with PUT /ecg/{uid}/confirmed beside
 * (never over) the machine's analysis.
 */
function analysisBox(studyUid: string, analysis: Analysis | null): HTMLElement {
  if (!analysis) return h('section.analysis', h('p', t('pending')));
  const device: Analysis = analysis.device_measurements ?? {};
  const statements: { code: string; zh?: string; en?: string }[] = analysis.statements ?? [];
  const critical = analysis.critical?.critical;
  const confirmed: Analysis | null = analysis.confirmed ?? null;
  const inputs = new Map<string, HTMLInputElement>();
  const readerCell = (key: string) => {
    const own = confirmed?.measurements?.[key];
    const value = typeof own === 'number' ? own : typeof analysis[key] === 'number' ? Math.round(analysis[key]) : '';
    const input = h('input', { type: 'number', name: `confirm-${key}`, value: String(value), step: '1' });
    inputs.set(key, input);
    return h('td', input);
  };
  const rhythm = h('input', { name: 'confirm-rhythm', value: confirmed?.rhythm ?? analysis.rhythm ?? '', maxLength: 32 });
  const stamp = h('p.confirmed-by', { dataset: { confirmed: confirmed ? 'yes' : 'no' } },
    confirmed ? `${t('ecgConfirmed')} · ${confirmed.confirmed_by ?? ''} · ${analysis.confirmed_at ? new Date(analysis.confirmed_at).toLocaleString() : ''}` : '');
  const confirmButton = h('button.primary', {
    name: 'ecg-confirm',
    onclick: async () => {
      const measurements: Record<string, number | null> = {};
      for (const [key, input] of inputs) measurements[key] = input.value === '' ? null : Number(input.value);
      confirmButton.disabled = true;
      try {
        const answer = await api<{ confirmed: Analysis; confirmed_at: string }>('PUT', `/ecg/${studyUid}/confirmed`, {
          json: {
            measurements,
            rhythm: rhythm.value.trim() || null,
            statements: statements.map((st) => ({ code: st.code ?? null, zh: st.zh ?? null, en: st.en ?? null })),
            critical: critical ?? null,
          },
        });
        stamp.dataset.confirmed = 'yes';
        stamp.textContent = `${t('ecgConfirmed')} · ${answer.confirmed?.confirmed_by ?? ''} · ${new Date(answer.confirmed_at).toLocaleString()}`;
        toast(t('ecgConfirmed'));
        // The report panel beside takes the confirmed values into its draft (report/panel.ts).
        document.dispatchEvent(new CustomEvent(ECG_CONFIRMED_EVENT, { detail: studyUid }));
      } catch (error) {
        toast((error as Error).message, 'error');
      } finally {
        confirmButton.disabled = false;
      }
    },
  }, t('ecgConfirm'));
  return h('section.analysis', { dataset: { status: analysis.status } }, [
    h('h3', t('machine')),
    critical
      ? h('div.critical-banner', [
          h('div', t('critical')),
          ...(analysis.critical.reasons ?? []).map((r: any) => h('div', (lang() === 'zh' ? r.zh : r.en) ?? r.code)),
        ])
      : null,
    h('table.measures', [
      h('thead', h('tr', [h('th', ''), h('th', t('machine')), h('th', t('device')), h('th', t('reader'))])),
      h('tbody', MEASURES.map(([key, label, unit]) =>
        h('tr', { dataset: { key } }, [h('th', `${t(label)} (${unit})`), h('td', fmt(analysis[key])), h('td', fmt(device[key])), readerCell(key)]),
      )),
    ]),
    h('p', [h('strong', `${t('rhythm')}: `), analysis.rhythm ?? '—']),
    h('h4', t('statements')),
    h('ul.statements', statements.map((s) => h('li', { dataset: { code: s.code } }, (lang() === 'zh' ? s.zh : s.en) ?? s.code))),
    analysis.error ? h('p.error', analysis.error) : null,
    h('div.ecg-confirm', [h('label', [`${t('rhythm')} `, rhythm]), confirmButton]),
    stamp,
  ]);
}

export async function mountECGViewer(root: HTMLElement, study: StudyDetail): Promise<() => void> {
  const leads = await api<Leads>('GET', `/ecg/${study.study_uid}/leads`, { query: { max_points: 6000 } });
  const paper = new ECGCanvas(leads);
  const readout = h('output.caliper-readout', { dataset: { ms: '' } }, t('calipersHint'));
  paper.onCaliper = (c: Caliper | null) => {
    readout.dataset.ms = c ? c.ms.toFixed(0) : '';
    readout.dataset.bpm = c ? c.bpm.toFixed(0) : '';
    readout.textContent = c ? `${t('interval')} ${Math.round(c.ms)} ms · ${t('rate')} ${Math.round(c.bpm)} bpm` : t('calipersHint');
  };

  function choice(name: string, label: string, values: number[], unit: string, current: number, set: (v: number) => void) {
    return h('div.choice', { role: 'group', 'aria-label': label }, [
      h('span', `${label}:`),
      ...values.map((v) =>
        h('button', {
          name: `${name}-${v}`,
          className: v === current ? 'active' : '',
          onclick: (e: Event) => {
            set(v);
            (e.currentTarget as HTMLElement).parentElement!.querySelectorAll('button').forEach((b) => b.classList.remove('active'));
            (e.currentTarget as HTMLElement).classList.add('active');
            paper.draw();
          },
        }, `${v} ${unit}`),
      ),
    ]);
  }

  const analysisSlot = h('div.analysis-slot');
  const paperWrap = h('div.paper-wrap', paper.canvas);
  clear(root);
  root.append(
    h('div.ecg-viewer', [
      h('div.toolbar', [
        choice('gain', t('gain'), [5, 10, 20], 'mm/mV', paper.gain, (v) => (paper.gain = v)),
        choice('speed', t('speed'), [25, 50], 'mm/s', paper.speed, (v) => (paper.speed = v)),
        h('button', { name: 'clear-caliper', onclick: () => paper.clearCaliper() }, `${t('calipers')} ✕`),
        readout,
      ]),
      h('div.ecg-body', [paperWrap, analysisSlot]),
    ]),
  );
  const fit = () => paper.fit(paperWrap.clientWidth - 4);
  fit();
  window.addEventListener('resize', fit);

  // The machine analysis may still be running (202): ask again until it is done or failed.
  let stopped = false;
  async function loadAnalysis(): Promise<void> {
    const answer = await fetch(`/api/v1/ecg/${study.study_uid}/analysis`, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem('rdx.token')}` },
    });
    if (stopped) return;
    if (answer.status === 202) {
      clear(analysisSlot);
      analysisSlot.append(analysisBox(study.study_uid, null));
      window.setTimeout(loadAnalysis, 2000);
      return;
    }
    if (!answer.ok) {
      toast(`ECG analysis: HTTP ${answer.status}`, 'error');
      return;
    }
    clear(analysisSlot);
    analysisSlot.append(analysisBox(study.study_uid, await answer.json()));
  }
  await loadAnalysis();

  return () => {
    stopped = true;
    window.removeEventListener('resize', fit);
  };
}
