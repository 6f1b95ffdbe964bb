// The app's recording and live-stream buttons follow what meetd announces in config.js
// (issue 19): meetd records and streams nothing itself yet, so no live-stream button; the record
// button offers the browser's local recording unless [web] local_recording is off.
import { useApp, appTest, assert, label } from './lib.mjs';

const withLocal = useApp({ name: 'app-recording' });
const without = useApp({ name: 'app-recording-off', config: '[web]\nlocal_recording = false\n' });

for (const [app, local] of [[withLocal, true], [without, false]]) {
    appTest(`record button ${local ? 'offers local recording' : 'hidden'}, no live stream button`, app.wrap(async () => {
        const a = await app.join('recbuttons', { name: 'Alice' });
        await a.waitFor(() => APP.store.getState()['features/base/participants'].local.role === 'moderator', 'moderator');
        const labels = await a.toolbarLabels();
        // "Record" (local recording alone) or "Record & Transcribe" (with a recording service).
        const record = labels.includes(label('toolbar.record')) || labels.includes(label('toolbar.recordAndTranscribe'));
        assert.equal(record, local, labels.join(', '));
        assert.ok(!labels.includes(label('dialog.startLiveStreaming')), labels.join(', '));
        await app.leaveAll();
    }));
}
