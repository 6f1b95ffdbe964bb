// Tokens signed as a learning platform signs them (Moodle's mod_jitsi: HS256 with the header
// kid "jitsi/custom_key_name"), for the tests of meetd's JWT sign-in. Signing is node's own
// crypto; meetd verifies with the jsonwebtoken crate.
import { createHmac, sign as cryptoSign } from 'node:crypto';

export const b64u = (s) => Buffer.from(s).toString('base64url');

/** Sign `claims`: alg HS256 (secret), RS256 (privateKey), or none. */
export function signToken(claims, { alg = 'HS256', secret, privateKey, kid = 'jitsi/custom_key_name' } = {}) {
    const head = `${b64u(JSON.stringify({ kid, typ: 'JWT', alg }))}.${b64u(JSON.stringify(claims))}`;
    let sig = '';
    if (alg === 'HS256') sig = createHmac('sha256', secret).update(head).digest('base64url');
    if (alg === 'RS256') sig = cryptoSign('sha256', Buffer.from(head), privateKey).toString('base64url');
    return `${head}.${sig}`;
}

/** The claims mod_jitsi's build_token puts in a user's token. */
export function moodleClaims({ name, teacher, room, appId = 'moodle', sub = 'meet.jitsi', avatar = '', exp = Math.floor(Date.now() / 1000) + 86400, ...rest }) {
    return {
        context: {
            user: { affiliation: teacher ? 'owner' : 'member', avatar, name, email: `${name.split(' ')[0].toLowerCase()}@uni.example`, id: '', moderator: teacher },
            group: '',
        },
        aud: 'jitsi', iss: appId, sub, room: encodeURIComponent(room), exp, moderator: teacher,
        ...rest,
    };
}
