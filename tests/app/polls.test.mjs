// Polls in the official web app (issue 11): create from the chat panel's polls tab, answer,
// see the results; a late joiner gets the polls and their results.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-polls' });

appTest('create, answer, results, late joiner', app.wrap(async () => {
    const r = 'polls1';
    const a = await app.join(r, { name: 'Alice' });
    const b = await app.join(r, { name: 'Bob' });
    const id = await a.createPoll('Lunch?', ['Pizza', 'Sushi']);
    await b.answerPoll(id, [1]);
    await a.answerPoll(id, [1]);
    await a.waitFor((pid) => {
        const p = APP.store.getState()['features/polls'].polls[pid];
        return p && p.answers[1].voters.length === 2;
    }, 'two votes for Sushi', 10000, id);
    assert.match(await a.pollResult(id, 1), /2 \(100%\)/);
    const c = await app.join(r, { name: 'Carol' });
    await c.openPolls();
    await c.page.locator(`#poll-${id}`).waitFor({ timeout: 10000 });
    await c.waitFor((pid) => APP.store.getState()['features/polls'].polls[pid]?.answers[1].voters.length === 2,
        'the votes so far', 10000, id);
    await app.leaveAll();
}));
