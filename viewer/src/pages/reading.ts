/** A study open for reading: images (or the ECG) on the left, the report panel on the right. */

import { personName } from '../api';
import { append, clear, h, toast } from '../dom';
import { t } from '../i18n';
import { reportPanel } from '../report/panel';
import { takeStudy } from '../studies';
import { nextStudy } from './worklist';

export function renderReading(
  root: HTMLElement,
  studyUid: string,
  kind: 'images' | 'ecg',
  openedAt: number,
): () => void {
  let disposeBody: (() => void) | null = null;
  let panel: Awaited<ReturnType<typeof reportPanel>> | null = null;
  let gone = false;

  const body = h('div.reading-body', h('p.loading', t('loadingImages')));
  const side = h('div.reading-side');
  const title = h('div.study-title');
  clear(root);
  root.append(
    h('section.reading', { dataset: { study: studyUid, kind } }, [
      h('div.reading-bar', [
        h('button', { name: 'back', onclick: () => (location.hash = '#/worklist'), title: 'Esc' }, `← ${t('back')}`),
        title,
        h('button', { name: 'next', onclick: goNext, title: 'N' }, `${t('next')} →`),
      ]),
      h('div.reading-main', [body, side]),
    ]),
  );

  function goNext(): void {
    location.hash = nextStudy(studyUid) ?? '#/worklist';
  }

  function onKey(event: KeyboardEvent): void {
    const typing = (event.target as HTMLElement).closest('textarea, input, select');
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      panel?.sign();
    } else if (!typing && (event.key === 'n' || event.key === 'N') && !event.ctrlKey) {
      event.preventDefault();
      goNext();
    } else if (!typing && event.key === 'Escape' && !document.querySelector('dialog[open]')) {
      location.hash = '#/worklist';
    }
  }
  document.addEventListener('keydown', onKey);

  (async () => {
    const study = await takeStudy(studyUid);
    performance.mark('rdx:study-detail');
    if (gone) return;
    const p = study.patient;
    append(title, [
      h('strong', personName(p.name) || p.patient_id),
      ` ${p.patient_id} · ${p.sex ?? ''} · ${study.modalities ?? ''} · ${study.description ?? ''} · ${study.origin}`,
      study.worklist_item ? h('span', { className: `prio prio-${study.worklist_item.priority}` }, t(`p_${study.worklist_item.priority}`)) : null,
    ]);
    const modality = kind === 'ecg' ? 'ECG' : (study.modalities ?? '').split(/[\\,/ ]/)[0] || 'DX';
    // The report panel does not wait for the images, nor the images for the panel.
    const reportReady = reportPanel(studyUid, modality, () => {
      location.hash = '#/worklist';
    }).then(async (report) => {
      panel = report;
      if (gone) await report.dispose();
      else side.append(report.element);
    });
    const bodyMount = await (kind === 'ecg'
      ? import('../ecg/viewer').then((m) => m.mountECGViewer(body, study))
      : import('../imaging/viewer').then((m) => m.mountImageViewer(body, study, openedAt)));
    if (gone) bodyMount();
    else disposeBody = bodyMount;
    // While this study is read, the next one's first image is fetched (the N key opens it).
    const next = nextStudy(studyUid)?.match(/^#\/study\/(.+)$/)?.[1];
    if (next && !gone) import('../imaging/prefetch').then((m) => m.prefetch([next])).catch(() => undefined);
    await reportReady;
  })().catch((error) => {
    console.error(error);
    toast(String(error?.message ?? error), 'error');
    body.textContent = String(error?.message ?? error);
  });

  return () => {
    gone = true;
    document.removeEventListener('keydown', onKey);
    disposeBody?.();
    void panel?.dispose();
  };
}
