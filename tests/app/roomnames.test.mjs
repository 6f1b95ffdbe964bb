// Room names as the app normalises them (issue 19): case, '@', spaces and non-ASCII letters. Two
// people typing the name differently meet in the same room, with media.
import { useApp, appTest, assert } from './lib.mjs';

const app = useApp({ name: 'app-roomnames' });

const cases = [
    ['MixedCase', 'mixedcase'],
    ['room@example.com', 'roomexample.com'],
    ['foo%20bar', 'Foo%20Bar'],
    [encodeURIComponent('фоо-бар'), encodeURIComponent('ФОО-БАР')],
    [encodeURIComponent('Größe'), encodeURIComponent('größe')],
];

for (const [first, second] of cases) {
    appTest(`"${decodeURIComponent(first)}" and "${decodeURIComponent(second)}" are one room`, app.wrap(async () => {
        const a = await app.join(first, { name: 'Alice' });
        const b = await app.join(second, { name: 'Bob' });
        const rooms = await Promise.all([a, b].map((p) => p.eval(() => APP.conference._room.room.roomjid)));
        assert.equal(rooms[0], rooms[1]);
        await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
        await app.leaveAll();
    }));
}

appTest('a room under a tenant path works', app.wrap(async () => {
    const a = await app.join('acme/Weekly', { name: 'Alice' });
    const b = await app.join('acme/weekly', { name: 'Bob' });
    await Promise.all([a.waitVideoFrom(b, 10000), b.waitVideoFrom(a, 10000)]);
    await app.leaveAll();
}));
