/**
 * The image viewer of a study: a Cornerstone3D stack viewport per study (the current one and,
 * side by side, a prior study of the same patient), with window/level by mouse drag and presets,
 * zoom/pan, invert, rotate/flip, length and angle in mm (from Pixel Spacing, PS3.3 §10.7.1.3),
 * and series/instance navigation.
 */

import { eventTarget, imageLoader, type Types } from '@cornerstonejs/core';
import { annotation, Enums as ToolEnums } from '@cornerstonejs/tools';
import { api, personName, type SeriesView, type StudyDetail, type WorklistPage } from '../api';
import { clear, h, toast } from '../dom';
import { t } from '../i18n';
import {
  activate,
  createToolGroup,
  Enums,
  imageSeries,
  initCornerstone,
  loadSeriesImages,
  presetFor,
  renderingEngine,
  type SeriesImages,
  type ToolKey,
} from './cornerstone';

const GROUP_ID = 'rdx-tools';

interface Pane {
  viewportId: string;
  element: HTMLDivElement;
  overlay: HTMLDivElement;
  study: StudyDetail;
  series: SeriesView | null;
  modality: string;
  range: { lower: number; upper: number } | null;
  drawnAt?: number;
}

function viewportOf(pane: Pane): Types.IStackViewport {
  return renderingEngine().getViewport(pane.viewportId) as Types.IStackViewport;
}

/** The newest other study of the same patient visible to the reader, if any. */
async function findPrior(study: StudyDetail): Promise<string | null> {
  const page = await api<WorklistPage>('GET', '/worklist', {
    query: { patient: study.patient.patient_id, limit: 50, sort: 'received_at' },
  }).catch(() => null);
  const others = (page?.items ?? []).filter(
    (i) => i.study_uid !== study.study_uid && i.patient_id === study.patient.patient_id && i.modality !== 'ECG',
  );
  others.sort((a, b) => b.received_at.localeCompare(a.received_at));
  const older = others.find((i) => i.received_at <= study.received_at) ?? others[0];
  return older?.study_uid ?? null;
}

export async function mountImageViewer(
  root: HTMLElement,
  study: StudyDetail,
  openedAt: number,
): Promise<() => void> {
  performance.mark('rdx:viewer-module');
  await initCornerstone();
  performance.mark('rdx:cornerstone-ready');
  // Fetch and decode the first image while the viewport is being set up (WebGL context, tools):
  // the reader's wait is the longer of the two, not their sum.
  const first = imageSeries(study)[0];
  const preloaded = first
    ? loadSeriesImages(study.study_uid, first.series_uid, first.instances.length).then((images) => {
        performance.mark('rdx:metadata');
        if (images.imageIds[0]) {
          imageLoader
            .loadAndCacheImage(images.imageIds[0])
            .then(() => performance.mark('rdx:image-loaded'))
            .catch(() => undefined);
        }
        return images;
      })
    : undefined;
  preloaded?.catch(() => undefined); // reported by showSeries below
  const engine = renderingEngine();
  const panes: Pane[] = [];
  let activeTool: ToolKey = 'wl';
  let toolGroup = createToolGroup(GROUP_ID, []);

  const viewports = h('div.viewports');
  const seriesList = h('nav.series-list', { 'aria-label': t('series') });
  const measurements = h('ol.measurements');
  const toolButtons = new Map<ToolKey, HTMLButtonElement>();

  function toolButton(key: ToolKey, label: string, shortcut: string): HTMLButtonElement {
    const button = h('button', {
      name: `tool-${key}`,
      title: `${label} (${shortcut})`,
      onclick: () => selectTool(key),
    }, label);
    toolButtons.set(key, button);
    return button;
  }

  function selectTool(key: ToolKey): void {
    activeTool = key;
    activate(toolGroup, key);
    toolButtons.forEach((button, k) => button.classList.toggle('active', k === key));
  }

  function eachViewport(fn: (vp: Types.IStackViewport, pane: Pane) => void): void {
    for (const pane of panes) {
      const vp = viewportOf(pane);
      if (vp) {
        fn(vp, pane);
        vp.render();
      }
    }
  }

  const presetButtons = ['presetDefault', 'presetChest', 'presetLung', 'presetBone'].map((key) =>
    h('button', {
      name: key,
      onclick: () =>
        eachViewport((vp, pane) => {
          const range = pane.range ? presetFor(key, pane.modality, pane.range) : null;
          if (range) vp.setProperties({ voiRange: range });
          else vp.resetProperties();
        }),
    }, t(key)),
  );

  const toolbar = h('div.toolbar', [
    toolButton('wl', t('wl'), 'W'),
    toolButton('pan', t('pan'), 'P'),
    toolButton('zoom', t('zoom'), 'Z'),
    toolButton('length', t('length'), 'L'),
    toolButton('angle', t('angle'), 'A'),
    h('span.sep'),
    ...presetButtons,
    h('span.sep'),
    h('button', { name: 'invert', title: `${t('invert')} (I)`, onclick: invert }, t('invert')),
    h('button', { name: 'rotate', title: `${t('rotate')} (R)`, onclick: rotate }, t('rotate')),
    h('button', { name: 'flipH', onclick: () => flip('flipHorizontal') }, t('flipH')),
    h('button', { name: 'flipV', onclick: () => flip('flipVertical') }, t('flipV')),
    h('button', { name: 'reset', onclick: reset }, t('reset')),
    h('span.sep'),
    h('button', { name: 'prev-image', title: '↑', onclick: () => step(-1) }, '▲'),
    h('button', { name: 'next-image', title: '↓', onclick: () => step(1) }, '▼'),
    h('button', { name: 'prior', disabled: true, onclick: togglePrior }, t('showPrior')),
  ]);
  const priorButton = toolbar.querySelector<HTMLButtonElement>('button[name=prior]')!;

  function invert(): void {
    eachViewport((vp) => vp.setProperties({ invert: !vp.getProperties().invert }));
  }
  function rotate(): void {
    eachViewport((vp) => vp.setViewPresentation({ rotation: ((vp.getViewPresentation().rotation ?? 0) + 90) % 360 }));
  }
  function flip(which: 'flipHorizontal' | 'flipVertical'): void {
    eachViewport((vp) => vp.setCamera({ [which]: !vp.getCamera()[which] }));
  }
  function reset(): void {
    eachViewport((vp) => {
      vp.resetCamera();
      vp.resetProperties();
    });
  }
  function step(delta: number): void {
    const pane = panes[0];
    const vp = pane && viewportOf(pane);
    if (!vp) return;
    const ids = vp.getImageIds();
    const next = Math.min(ids.length - 1, Math.max(0, vp.getCurrentImageIdIndex() + delta));
    vp.setImageIdIndex(next);
  }

  function updateOverlay(pane: Pane): void {
    const vp = viewportOf(pane);
    if (!vp) return;
    const { voiRange, invert: inverted } = vp.getProperties();
    const index = vp.getCurrentImageIdIndex();
    const count = vp.getImageIds().length;
    const wl = voiRange ? `W ${Math.round(voiRange.upper - voiRange.lower)} L ${Math.round((voiRange.upper + voiRange.lower) / 2)}` : '';
    pane.overlay.textContent = '';
    pane.overlay.append(
      h('div', `${personName(pane.study.patient.name)} · ${pane.study.patient.patient_id}`),
      h('div', `${pane.study.study_date ?? ''} ${pane.series?.description ?? pane.study.description ?? ''}`),
      h('div.wl', { dataset: { wl } }, `${wl}${inverted ? ' · INV' : ''}`),
      h('div', `${t('image')} ${index + 1}/${count}`),
    );
  }

  function makePane(study: StudyDetail, slot: 'current' | 'prior'): Pane {
    const element = h('div.viewport', { dataset: { slot }, oncontextmenu: (e: Event) => e.preventDefault() });
    const overlay = h('div.overlay');
    const wrap = h('div.pane', { dataset: { slot } }, [element, overlay]);
    viewports.append(wrap);
    const pane: Pane = {
      viewportId: `vp-${slot}`,
      element,
      overlay,
      study,
      series: null,
      modality: '',
      range: null,
    };
    engine.enableElement({
      viewportId: pane.viewportId,
      type: Enums.ViewportType.STACK,
      element,
      defaultOptions: { background: [0, 0, 0] as Types.Point3 },
    });
    toolGroup.addViewport(pane.viewportId, engine.id);
    for (const name of [Enums.Events.VOI_MODIFIED, Enums.Events.STACK_NEW_IMAGE, Enums.Events.CAMERA_MODIFIED]) {
      element.addEventListener(name, () => updateOverlay(pane));
    }
    return pane;
  }

  async function showSeries(pane: Pane, series: SeriesView, preloaded?: Promise<SeriesImages>): Promise<void> {
    pane.series = series;
    pane.modality = series.modality ?? '';
    pane.element.dataset.state = 'loading';
    pane.overlay.textContent = t('loadingImages');
    try {
      const { imageIds } = await (preloaded ??
        loadSeriesImages(pane.study.study_uid, series.series_uid, series.instances.length));
      const vp = viewportOf(pane);
      await vp.setStack(imageIds, 0);
      performance.mark('rdx:stack-set');
      // The image is loaded and its draw flagged for the next animation frame; an earlier
      // IMAGE_RENDERED (the empty viewport's) must not count as the first image drawn.
      const drawn = new Promise<void>((done) => {
        pane.element.addEventListener(
          Enums.Events.IMAGE_RENDERED,
          () => {
            pane.drawnAt ??= performance.now();
            done();
          },
          { once: true },
        );
      });
      const voi = vp.getProperties().voiRange;
      const image = vp.getCornerstoneImage();
      pane.range = image ? { lower: image.minPixelValue, upper: image.maxPixelValue } : voi ?? null;
      vp.render();
      await Promise.race([drawn, new Promise((late) => window.setTimeout(late, 3000))]);
      pane.element.dataset.state = 'ready';
      pane.element.dataset.imageCount = String(imageIds.length);
      updateOverlay(pane);
    } catch (error) {
      pane.element.dataset.state = 'error';
      pane.overlay.textContent = `${t('imageFailed')}: ${(error as Error).message}`;
      throw error;
    }
  }

  function drawSeriesList(study: StudyDetail): void {
    clear(seriesList);
    seriesList.append(h('h4', t('series')));
    for (const series of imageSeries(study)) {
      seriesList.append(
        h('button.series', {
          dataset: { uid: series.series_uid },
          onclick: () => showSeries(panes[0], series).catch((e) => toast(String(e), 'error')),
        }, [
          h('strong', `${series.modality ?? ''} ${series.series_number ?? ''}`),
          h('div', series.description ?? series.body_part ?? ''),
          h('small', `${series.instances.length} ${t('image')}`),
        ]),
      );
    }
    seriesList.append(h('h4', t('measurements')), measurements);
  }

  // Measurements: Cornerstone draws them on the image; the list repeats them with their values.
  function measurementText(item: any): string | null {
    const stats = Object.values(item.data?.cachedStats ?? {})[0] as any;
    if (!stats) return null;
    if (item.metadata?.toolName === 'Length' && typeof stats.length === 'number') {
      return `${t('length')} ${stats.length.toFixed(1)} ${stats.unit ?? 'mm'}`;
    }
    if (item.metadata?.toolName === 'Angle' && typeof stats.angle === 'number') {
      return `${t('angle')} ${stats.angle.toFixed(1)}°`;
    }
    return null;
  }
  function drawMeasurements(): void {
    clear(measurements);
    for (const item of annotation.state.getAllAnnotations()) {
      const text = measurementText(item);
      if (text) measurements.append(h('li', { dataset: { tool: item.metadata?.toolName } }, text));
    }
  }
  const annotationEvents = [
    ToolEnums.Events.ANNOTATION_COMPLETED,
    ToolEnums.Events.ANNOTATION_MODIFIED,
    ToolEnums.Events.ANNOTATION_REMOVED,
  ];
  for (const name of annotationEvents) eventTarget.addEventListener(name, drawMeasurements);

  let priorUid: string | null = null;
  async function togglePrior(): Promise<void> {
    const existing = panes.find((p) => p.viewportId === 'vp-prior');
    if (existing) {
      engine.disableElement(existing.viewportId);
      existing.element.parentElement!.remove();
      panes.splice(panes.indexOf(existing), 1);
      priorButton.textContent = t('showPrior');
      engine.resize(true, false); // the layout changed: fit the image to its new pane
      return;
    }
    if (!priorUid) return;
    const prior = await api<StudyDetail>('GET', `/studies/${priorUid}`);
    const pane = makePane(prior, 'prior');
    panes.push(pane);
    priorButton.textContent = t('hidePrior');
    engine.resize(true, false);
    const first = imageSeries(prior)[0];
    if (first) await showSeries(pane, first).catch((e) => toast(String(e), 'error'));
  }

  clear(root);
  root.append(h('div.image-viewer', [toolbar, h('div.image-body', [seriesList, viewports])]));
  const current = makePane(study, 'current');
  panes.push(current);
  selectTool('wl');
  drawSeriesList(study);
  const resize = () => engine.resize(true, true);
  window.addEventListener('resize', resize);

  if (first) {
    await showSeries(current, first, preloaded)
      .then(() => {
        // The first image drawn after the click in the worklist: the reader's wait, recorded.
        if (current.drawnAt === undefined) return; // ready, but no draw was seen: no figure
        const ms = Math.round(current.drawnAt - openedAt);
        performance.mark('rdx:first-image', { startTime: current.drawnAt });
        current.element.dataset.firstImageMs = String(ms);
        console.info(`first image drawn ${ms} ms after opening`);
      })
      .catch((e) => toast(`${t('imageFailed')}: ${e.message ?? e}`, 'error'));
  }
  findPrior(study).then((uid) => {
    priorUid = uid;
    priorButton.disabled = !uid;
    priorButton.title = uid ? t('prior') : t('noPrior');
  });

  function onKey(event: KeyboardEvent): void {
    if ((event.target as HTMLElement).closest('textarea, input, select')) return;
    const keys: Record<string, () => void> = {
      w: () => selectTool('wl'),
      p: () => selectTool('pan'),
      z: () => selectTool('zoom'),
      l: () => selectTool('length'),
      a: () => selectTool('angle'),
      i: invert,
      r: rotate,
      ArrowUp: () => step(-1),
      ArrowDown: () => step(1),
    };
    const fn = keys[event.key];
    if (fn && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      fn();
    }
  }
  document.addEventListener('keydown', onKey);

  return () => {
    document.removeEventListener('keydown', onKey);
    window.removeEventListener('resize', resize);
    for (const name of annotationEvents) eventTarget.removeEventListener(name, drawMeasurements);
    annotation.state.removeAllAnnotations();
    for (const pane of panes) engine.disableElement(pane.viewportId);
    toolGroup = createToolGroup(GROUP_ID, []);
    void activeTool;
  };
}
