import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The built app (`npm run build`) is served by the broker itself (`--web-root dist`), so
// everything is same-origin. For `npm run dev`, start a broker and set BROKER_URL (default
// http://127.0.0.1:8080): /api is proxied to it, and the app's realtime connection goes to it
// directly (VITE_BROKER_URL is passed on to the client).
const broker = process.env.BROKER_URL || 'http://127.0.0.1:8080';

export default defineConfig(({ command }) => ({
  plugins: [react()],
  define: {
    'import.meta.env.VITE_BROKER_URL': JSON.stringify(command === 'serve' ? broker : ''),
  },
  server: { proxy: { '/api': broker } },
  build: { chunkSizeWarningLimit: 1024 },
}));
