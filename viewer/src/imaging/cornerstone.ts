/**
 * Cornerstone3D set-up: the rendering core, the tools, and the DICOM image loader reading the
 * hub's WADO-RS (DICOM PS3.18 §10.4: series metadata `…/series/{series}/metadata`, frames
 * `…/instances/{sop}/frames/1`), with the reader's bearer token on every request.
 */

import {
  cache,
  Enums,
  init as coreInit,
  metaData,
  RenderingEngine,
  type Types,
} from '@cornerstonejs/core';
import * as dicomImageLoader from '@cornerstonejs/dicom-image-loader';
import {
  AngleTool,
  addTool,
  Enums as ToolEnums,
  init as toolsInit,
  LengthTool,
  PanTool,
  StackScrollTool,
  ToolGroupManager,
  WindowLevelTool,
  ZoomTool,
} from '@cornerstonejs/tools';
import { authHeaders, type SeriesView, type StudyDetail } from '../api';

export const DICOMWEB_ROOT = '/dicom-web';
const IMAGE_MODALITIES = new Set(['DX', 'CR', 'CT', 'MR', 'MG', 'RF', 'XA', 'US', 'PX', 'IO', 'DR']);

/** The study's series that hold images (not ECG waveforms, reports or presentation states). */
export function imageSeries(study: StudyDetail): SeriesView[] {
  return study.series.filter((s) => IMAGE_MODALITIES.has(s.modality ?? '') && s.instances.length > 0);
}
let ready: Promise<void> | null = null;
let engine: RenderingEngine | null = null;

export const TOOL_NAMES = {
  wl: WindowLevelTool.toolName,
  pan: PanTool.toolName,
  zoom: ZoomTool.toolName,
  length: LengthTool.toolName,
  angle: AngleTool.toolName,
  scroll: StackScrollTool.toolName,
} as const;
export type ToolKey = keyof typeof TOOL_NAMES;

/**
 * Draw on the CPU when WebGL is a software rasteriser (SwiftShader, llvmpipe: a reading PC
 * without a usable GPU, or headless Chromium): uploading a 2048² 16-bit image as a texture and
 * shading it through emulated GL costs more than Cornerstone's CPU path, which only computes the
 * LUT'd pixels shown. ``localStorage['rdx.render'] = 'gpu' | 'cpu'`` overrides the choice.
 */
export function cpuRendering(): boolean {
  const forced = localStorage.getItem('rdx.render');
  if (forced === 'cpu' || forced === 'gpu') return forced === 'cpu';
  try {
    const gl = document.createElement('canvas').getContext('webgl2');
    if (!gl) return true;
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    const renderer = String(info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));
    gl.getExtension('WEBGL_lose_context')?.loseContext();
    return /swiftshader|llvmpipe|software/i.test(renderer);
  } catch {
    return true;
  }
}

/** Start Cornerstone once per page. */
export function initCornerstone(): Promise<void> {
  ready ??= (async () => {
    const cpu = cpuRendering();
    // Two viewports at most (the study and its prior): not the default pool of 7 GL contexts,
    // each of which costs a software rasteriser time to create.
    coreInit({ rendering: { useCPURendering: cpu, webGlContextCount: 2 } } as Parameters<typeof coreInit>[0]);
    document.documentElement.dataset.render = cpu ? 'cpu' : 'gpu';
    // A reading page stays open all day and prefetches: 1 GB of decoded images (~120 DX of
    // 2048², a few CT series), not Cornerstone's 3 GB default, on a county PC with 8 GB.
    cache.setMaxCacheSize(1024 ** 3);
    dicomImageLoader.init({
      maxWebWorkers: Math.max(1, Math.min(2, navigator.hardwareConcurrency || 1)),
      // Every WADO-RS request carries the reader's token (the hub scopes studies per user).
      beforeSend: (_xhr: unknown, imageId: string) => ({ ...authHeaders(), ...frameAccept(imageId) }),
    });
    // Higher priority than the loader's own provider (0): it runs first and falls through.
    metaData.addProvider(projectionPlane, 100);
    toolsInit();
    for (const tool of [WindowLevelTool, PanTool, ZoomTool, LengthTool, AngleTool, StackScrollTool]) {
      addTool(tool);
    }
  })();
  return ready;
}

/** Large single-frame images (DX, CR, MG): at least this many pixels. */
const LARGE_IMAGE_PIXELS = 1024 * 1024;
const UNCOMPRESSED_FRAMES =
  'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';

/**
 * Large single-frame images are asked for uncompressed (PS3.18 §8.7.3.5.2). The hub keeps their
 * lossless decode from processing (``dicomweb/renditions.py``), so this costs it a read, while
 * decoding a 2048² JPEG 2000 here in WebAssembly takes over a second of the reader's first look.
 * Everything else comes as stored (``transfer-syntax=*``, the loader's default).
 */
function frameAccept(imageId: string): Record<string, string> {
  const instance = dicomImageLoader.wadors.metaDataManager.get(imageId) as unknown as DicomJson | undefined;
  if (!instance) return {};
  const frames = Number(firstValue(instance, '00280008') ?? 1) || 1;
  const pixels = Number(firstValue(instance, '00280010') ?? 0) * Number(firstValue(instance, '00280011') ?? 0);
  return frames === 1 && pixels >= LARGE_IMAGE_PIXELS ? { Accept: UNCOMPRESSED_FRAMES } : {};
}

export function renderingEngine(): RenderingEngine {
  engine ??= new RenderingEngine('rdx-engine');
  return engine;
}

type DicomJson = Record<string, { vr: string; Value?: unknown[] }>;

/**
 * Image plane of projection radiographs (DX/CR/MG): they carry no Image Position/Orientation
 * (Patient), so the loader marks their plane "default values" and Cornerstone then measures in
 * px. Their spacing is real all the same — Pixel Spacing at the patient plane (PS3.3
 * §10.7.1.3, e.g. magnification-corrected with Pixel Spacing Calibration Type GEOMETRY), or else
 * Imager Pixel Spacing at the detector divided by the Estimated Radiographic Magnification
 * Factor (PS3.3 §C.8.11.1) — so lengths and angles are given in mm from it.
 */
function projectionPlane(type: string, imageId: string): unknown {
  if (type !== 'imagePlaneModule' || !imageId.startsWith('wadors:')) return undefined;
  const instance = dicomImageLoader.wadors.metaDataManager.get(imageId) as unknown as DicomJson | undefined;
  if (!instance || instance['00200037']?.Value) return undefined; // cross-sectional: as it is
  const base = dicomImageLoader.wadors.metaData.metaDataProvider(type, imageId) as Record<string, any> | undefined;
  if (!base) return undefined;
  let spacing = (instance['00280030']?.Value as number[] | undefined)?.map(Number);
  if (!spacing) {
    const imager = (instance['00181164']?.Value as number[] | undefined)?.map(Number);
    const ermf = Number(instance['00181114']?.Value?.[0] ?? 1) || 1;
    spacing = imager?.map((v) => v / ermf);
  }
  if (!spacing || !(spacing[0] > 0) || !(spacing[1] > 0)) return undefined;
  return {
    ...base,
    pixelSpacing: spacing,
    rowPixelSpacing: spacing[0],
    columnPixelSpacing: spacing[1],
    usingDefaultValues: false,
  };
}

function firstValue(instance: DicomJson, tag: string): unknown {
  return instance[tag]?.Value?.[0];
}

export interface SeriesImages {
  imageIds: string[];
  metadata: DicomJson[];
}

const seriesCache = new Map<string, Promise<SeriesImages>>();

/**
 * The image IDs of one series, in Instance Number order, with each instance's DICOM JSON
 * metadata (PS3.18 §F.2) registered for the loader; one imageId per frame. Asked once per series
 * and instance count: the prefetch, the viewer and the prior pane share the answer.
 */
export function loadSeriesImages(studyUid: string, seriesUid: string, instances = 0): Promise<SeriesImages> {
  const key = `${studyUid}/${seriesUid}/${instances}`;
  let answer = seriesCache.get(key);
  if (!answer) {
    answer = fetchSeriesImages(studyUid, seriesUid);
    seriesCache.set(key, answer);
    answer.catch(() => seriesCache.delete(key));
  }
  return answer;
}

async function fetchSeriesImages(studyUid: string, seriesUid: string): Promise<SeriesImages> {
  const base = `${DICOMWEB_ROOT}/studies/${studyUid}/series/${seriesUid}`;
  const answer = await fetch(`${base}/metadata`, {
    headers: { ...authHeaders(), Accept: 'application/dicom+json' },
  });
  if (!answer.ok) throw new Error(`WADO-RS metadata: HTTP ${answer.status}`);
  const instances = ((await answer.json()) as DicomJson[]).slice();
  instances.sort(
    (a, b) => Number(firstValue(a, '00200013') ?? 0) - Number(firstValue(b, '00200013') ?? 0),
  );
  const imageIds: string[] = [];
  const metadata: DicomJson[] = [];
  for (const instance of instances) {
    const sop = String(firstValue(instance, '00080018'));
    const frames = Number(firstValue(instance, '00280008') ?? 1) || 1;
    for (let frame = 1; frame <= frames; frame++) {
      const imageId = `wadors:${location.origin}${base}/instances/${sop}/frames/${frame}`;
      dicomImageLoader.wadors.metaDataManager.add(imageId, instance as any);
      imageIds.push(imageId);
      metadata.push(instance);
    }
  }
  return { imageIds, metadata };
}

/** Window presets (centre, width) in the image's modality units; for CT these are HU. */
export const PRESETS: Record<string, { center: number; width: number } | null> = {
  presetDefault: null,
  presetChest: { center: 40, width: 400 },
  presetLung: { center: -600, width: 1500 },
  presetBone: { center: 480, width: 2500 },
};

/**
 * For projection radiographs (DX/CR) the pixel values are not HU, so the presets are taken as
 * fractions of the image's own value range: chest = soft tissue, lung = the dark end wide, bone
 * = the bright end narrow.
 */
export function presetFor(
  key: string,
  modality: string,
  range: { lower: number; upper: number },
): Types.VOIRange | null {
  if (modality === 'CT') {
    const preset = PRESETS[key];
    return preset ? { lower: preset.center - preset.width / 2, upper: preset.center + preset.width / 2 } : null;
  }
  const span = range.upper - range.lower;
  const at = (f: number) => range.lower + f * span;
  switch (key) {
    case 'presetChest':
      return { lower: at(0.1), upper: at(0.9) };
    case 'presetLung':
      return { lower: at(-0.1), upper: at(0.6) };
    case 'presetBone':
      return { lower: at(0.45), upper: at(1.05) };
    default:
      return null;
  }
}

export type ToolGroup = NonNullable<ReturnType<typeof ToolGroupManager.createToolGroup>>;

export function createToolGroup(id: string, viewportIds: string[]): ToolGroup {
  ToolGroupManager.destroyToolGroup(id);
  const group = ToolGroupManager.createToolGroup(id)!;
  for (const name of Object.values(TOOL_NAMES)) group.addTool(name);
  for (const viewportId of viewportIds) group.addViewport(viewportId, 'rdx-engine');
  return group;
}

/** Left button runs ``key``; right button zooms, middle pans, the wheel scrolls the stack. */
export function activate(group: ToolGroup, key: ToolKey): void {
  const { MouseBindings } = ToolEnums;
  for (const name of [TOOL_NAMES.wl, TOOL_NAMES.pan, TOOL_NAMES.zoom, TOOL_NAMES.length, TOOL_NAMES.angle]) {
    group.setToolPassive(name, { removeAllBindings: true });
  }
  group.setToolActive(TOOL_NAMES[key], { bindings: [{ mouseButton: MouseBindings.Primary }] });
  if (key !== 'zoom') group.setToolActive(TOOL_NAMES.zoom, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  if (key !== 'pan') group.setToolActive(TOOL_NAMES.pan, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(TOOL_NAMES.scroll, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
}

export { Enums, metaData };
export type StackViewport = Types.IStackViewport;
