/**
 * The first image of the studies a reader is about to open, fetched and decoded while the
 * worklist is on screen: the top rows, the row under the pointer, and the next study while one
 * is being read. A DX is one 2048² JPEG 2000 frame whose wasm decode is most of the wait after a
 * click (0.6–4 s on two shared cores); done ahead, the click only sets up the viewport and draws.
 *
 * One study at a time, nearest first: the decoders share the reader's cores with the page. A
 * study's detail and series metadata are the same requests the viewer would make (shared through
 * ``studies.ts`` and ``loadSeriesImages``), and the image sits in Cornerstone's cache, where the
 * viewer's ``setStack`` finds it. Nothing is claimed: prefetching reads, as a viewer does.
 */

import { imageLoader } from '@cornerstonejs/core';
import { token } from '../api';
import { prefetchStudy } from '../studies';
import { imageSeries, initCornerstone, loadSeriesImages } from './cornerstone';

/** How many of the worklist's top image rows are prefetched. */
export const TOP_ROWS = 3;

const done = new Set<string>();
let queue: string[] = [];
let running = false;

/** Prefetch ``uids`` (image studies) after what is queued, or before it when ``first``. */
export function prefetch(uids: string[], first = false): void {
  if (localStorage.getItem('rdx.prefetch') === 'off') return; // to measure the cold path
  const wanted = uids.filter((uid) => !done.has(uid));
  if (!wanted.length) return;
  queue = first
    ? [...wanted, ...queue.filter((uid) => !wanted.includes(uid))]
    : [...queue, ...wanted.filter((uid) => !queue.includes(uid))];
  if (!running) void pump();
}

/** Leave what has not started (the reader opened a study: its own images come first now). */
export function stopPrefetch(): void {
  queue = [];
}

async function pump(): Promise<void> {
  running = true;
  try {
    await initCornerstone();
    for (let uid = queue.shift(); uid !== undefined && token(); uid = queue.shift()) {
      done.add(uid);
      await firstImage(uid).catch(() => done.delete(uid));
    }
  } finally {
    running = false;
  }
}

async function firstImage(uid: string): Promise<void> {
  const study = await prefetchStudy(uid);
  const series = imageSeries(study)[0];
  if (!series) return;
  const { imageIds } = await loadSeriesImages(uid, series.series_uid, series.instances.length);
  if (imageIds[0]) await imageLoader.loadAndCacheImage(imageIds[0]);
}
