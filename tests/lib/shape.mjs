// One UDP flow on the loopback interface through a narrow link (tc htb, which this kernel has;
// it has no netem): every datagram to `port` goes through a class of `rate` with a 30-packet
// queue, everything else through a 10 Gbit/s default class. Needs root (the tests' network
// namespace).
import { execFileSync } from 'node:child_process';

const tc = (...args) => execFileSync('tc', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** Shape packets to `port` (UDP, or TCP with proto 'tcp') to `rate` (e.g. '300kbit'). Throws when tc cannot. */
export function shapePort(port, rate, proto = 'udp') {
    tc('qdisc', 'add', 'dev', 'lo', 'root', 'handle', '1:', 'htb', 'default', '10');
    tc('class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:10', 'htb', 'rate', '10gbit');
    tc('class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:20', 'htb', 'rate', rate, 'ceil', rate);
    tc('qdisc', 'add', 'dev', 'lo', 'parent', '1:20', 'handle', '20:', 'pfifo', 'limit', '30');
    tc('filter', 'add', 'dev', 'lo', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32',
        'match', 'ip', 'protocol', proto === 'tcp' ? '6' : '17', '0xff', 'match', 'ip', 'dport', String(port), '0xffff', 'flowid', '1:20');
}

/** Remove the shaping (if any). */
export function unshape() {
    try {
        tc('qdisc', 'del', 'dev', 'lo', 'root');
    } catch {
        // none
    }
}
