// pm2 process file for the fleet: the intake, the read API and N workers.
//
// No secret lives here. pm2 gives each app the environment of the shell that
// runs `pm2 start` (DATABASE_URL, REDIS_URL, THINKIFIC_WEBHOOK_SECRET, ...),
// plus the few per-app variables below. Load the private env file first:
//
//   set -a; . /etc/fleet/fleet.env; set +a
//   pm2 start deploy/pm2/ecosystem.config.js
//   # after changing the env file: pm2 restart deploy/pm2/ecosystem.config.js --update-env
//
// Knobs, read from that same environment:
//   FLEET_BIN           the fleet binary (default /usr/local/bin/fleet)
//   FLEET_WORKERS       how many workers (default 2): worker-1 ... worker-N
//   FLEET_HEALTH_PORT   first worker's health port (default 9101); worker-i
//                       serves /healthz and /readyz on 127.0.0.1:(port + i - 1)
//
// Run `fleet migrate` before starting (or upgrading): the API and the workers
// refuse a schema older than their binary.
'use strict';

const bin = process.env.FLEET_BIN || '/usr/local/bin/fleet';

function positiveInteger(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^[1-9][0-9]*$/.test(raw)) {
    throw new Error(`${name} must be a positive integer, not ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

const workers = positiveInteger('FLEET_WORKERS', 2);
const firstHealthPort = positiveInteger('FLEET_HEALTH_PORT', 9101);
if (firstHealthPort + workers - 1 > 65535) {
  throw new Error('FLEET_HEALTH_PORT + FLEET_WORKERS - 1 must be a TCP port (at most 65535)');
}

// What every fleet process shares.
const common = {
  script: bin,
  interpreter: 'none', // a native binary, not a Node script
  exec_mode: 'fork',
  instances: 1,
  autorestart: true,
  // 100 ms after a crash, doubling up to pm2's 15 s cap; reset once the
  // process has stayed up for 30 s. A dependency down at start-up does not
  // turn into a restart storm.
  exp_backoff_restart_delay: 100,
  // pm2 stops with SIGINT, which the fleet handles like SIGTERM: stop
  // accepting, finish the work in hand, exit 0. A worker waits at most
  // FLEET_BLOCK_MS (2 s) for its read in flight and then finishes one batch;
  // 30 s leaves a wide margin before pm2's SIGKILL.
  kill_timeout: 30000,
};

const worker = (index) => ({
  ...common,
  name: `fleet-worker-${index}`,
  args: ['worker'],
  env: {
    // One consumer name per process: a second worker with the same name is
    // refused.
    FLEET_CONSUMER_NAME: `worker-${index}`,
    FLEET_HEALTH_LISTEN: `127.0.0.1:${firstHealthPort + index - 1}`,
  },
});

module.exports = {
  apps: [
    { ...common, name: 'fleet-intake', args: ['intake'] },
    { ...common, name: 'fleet-api', args: ['api'] },
    ...Array.from({ length: workers }, (_, i) => worker(i + 1)),
  ],
};
