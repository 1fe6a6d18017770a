import { readdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

// Every viewer/*.html is a page of its own (index.html: the reading workstation; others, e.g.
// the statistics dashboard, are added beside it and built without touching this file).
const root = fileURLToPath(new URL('.', import.meta.url));
const pages = Object.fromEntries(
  readdirSync(root)
    .filter((name) => name.endsWith('.html'))
    .map((name) => [name.replace(/\.html$/, ''), resolve(root, name)]),
);

export default defineConfig({
  base: '/',
  resolve: {
    alias: { xmlbuilder2: resolve(root, 'src/shims/xmlbuilder2.ts') },
  },
  build: {
    target: 'esnext',
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 6000,
    rollupOptions: { input: pages },
  },
  // Cornerstone's DICOM image loader decodes in module workers that import wasm codecs.
  worker: { format: 'es' },
  optimizeDeps: {
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser'],
  },
  server: {
    // `npm run dev` against a hub on :8000 (make run)
    proxy: {
      '/api': 'http://127.0.0.1:8000',
      '/dicom-web': 'http://127.0.0.1:8000',
    },
  },
});
