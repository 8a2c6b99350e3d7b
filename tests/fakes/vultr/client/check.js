#!/usr/bin/env node
// Drives the Vultr API stand-in with the official client, @vultr/vultr-node,
// through everything ephrun relies on, and checks every reply's shape.
//
//   VULTR_API_URL=http://127.0.0.1:PORT/v2 VULTR_API_KEY=KEY node check.js
//
// Prints "check: ok (N calls)" and exits 0, or prints what differed and exits 1.
// It deletes everything it made, also on failure. The client turns HTTP errors
// into returned (not thrown) Error objects "<statusText>: <error>" and returns
// undefined for replies without a JSON body (204); both are checked here.
'use strict'

const crypto = require('crypto')
const VultrNode = require('@vultr/vultr-node')

const baseUrl = process.env.VULTR_API_URL
const apiKey = process.env.VULTR_API_KEY
if (!baseUrl || !apiKey) {
  console.error('check: set VULTR_API_URL and VULTR_API_KEY')
  process.exit(2)
}
// rateLimit is read by older releases of the client only; 2.8.0 does not throttle.
const vultr = VultrNode.initialize({ apiKey, baseUrl, rateLimit: 600 })
const TIMEOUT_MS = Number(process.env.CHECK_TIMEOUT_MS || 60000)
const started = Date.now()
let calls = 0

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

class Mismatch extends Error {}

function fail (what) {
  throw new Mismatch(what)
}

function expect (cond, what) {
  if (!cond) fail(what)
}

// One call through the client. A 429 is retried (the stand-in limits requests
// like Vultr does); any other error is returned to the caller when allowed,
// otherwise it fails the check.
async function call (label, fn, params, { allowError = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    if (Date.now() - started > TIMEOUT_MS) fail(`timed out during ${label}`)
    calls++
    const r = await fn(params)
    if (r instanceof Error) {
      if (/^Too Many Requests/.test(r.message) && attempt < 50) {
        await sleep(100 * Math.min(attempt + 1, 5))
        continue
      }
      if (allowError) return r
      fail(`${label}: unexpected error: ${r.message}`)
    }
    return r
  }
}

const TYPES = {
  string: (v) => typeof v === 'string',
  number: (v) => typeof v === 'number' && Number.isFinite(v),
  array: (v) => Array.isArray(v),
  strings: (v) => Array.isArray(v) && v.every((s) => typeof s === 'string'),
  date: (v) => typeof v === 'string' && !isNaN(Date.parse(v)),
  uuid: (v) => typeof v === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(v)
}

function shape (label, obj, spec) {
  expect(obj && typeof obj === 'object' && !Array.isArray(obj), `${label}: not an object: ${JSON.stringify(obj)}`)
  for (const [key, type] of Object.entries(spec)) {
    expect(key in obj, `${label}: field ${key} missing in ${JSON.stringify(obj)}`)
    if (Array.isArray(type)) {
      expect(type.includes(obj[key]), `${label}: ${key} is ${JSON.stringify(obj[key])}, not one of ${type}`)
    } else {
      expect(TYPES[type](obj[key]), `${label}: ${key} is ${JSON.stringify(obj[key])}, not a ${type}`)
    }
  }
}

const INSTANCE = {
  id: 'uuid', os: 'string', ram: 'number', disk: 'number', main_ip: 'string', vcpu_count: 'number',
  region: 'string', plan: 'string', date_created: 'date',
  status: ['pending', 'active', 'suspended', 'resizing'],
  allowed_bandwidth: 'number', netmask_v4: 'string', gateway_v4: 'string',
  power_status: ['running', 'stopped'],
  server_status: ['none', 'locked', 'installingbooting', 'ok'],
  v6_network: 'string', v6_main_ip: 'string', v6_network_size: 'number', label: 'string',
  internal_ip: 'string', kvm: 'string', hostname: 'string', tag: 'string', tags: 'strings',
  os_id: 'number', app_id: 'number', image_id: 'string', firewall_group_id: 'string',
  features: 'strings', user_scheme: 'string'
}
const SNAPSHOT = {
  id: 'string', date_created: 'date', description: 'string', size: 'number',
  compressed_size: 'number', status: ['pending', 'complete', 'deleted'], os_id: 'number', app_id: 'number'
}
const SSH_KEY = { id: 'string', date_created: 'date', name: 'string', ssh_key: 'string' }
const PLAN = {
  id: 'string', vcpu_count: 'number', ram: 'number', disk: 'number', bandwidth: 'number',
  monthly_cost: 'number', type: 'string', locations: 'strings'
}

function meta (label, reply, total) {
  shape(`${label} meta`, reply.meta, { total: 'number' })
  shape(`${label} meta.links`, reply.meta.links, { next: 'string', prev: 'string' })
  if (total !== undefined) expect(reply.meta.total === total, `${label}: meta.total ${reply.meta.total}, expected ${total}`)
}

// An OpenSSH public key line for a fresh ed25519 key.
function opensshPublicKey (comment) {
  const { publicKey } = crypto.generateKeyPairSync('ed25519')
  const raw = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32)
  const str = (b) => Buffer.concat([Buffer.from([0, 0, 0, b.length]), b])
  const blob = Buffer.concat([str(Buffer.from('ssh-ed25519')), str(raw)])
  return `ssh-ed25519 ${blob.toString('base64')} ${comment}`
}

async function waitInstance (id, pred, what, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs
  for (;;) {
    const r = await call('getInstance', vultr.instances.getInstance, { 'instance-id': id })
    shape('getInstance.instance', r.instance, INSTANCE)
    if (pred(r.instance)) return r.instance
    if (Date.now() > until) fail(`instance ${id} never became ${what}: ${JSON.stringify(r.instance)}`)
    await sleep(150)
  }
}

// Deletes an instance, waiting while the API says it is locked.
async function deleteInstance (id, { expectLocked = false } = {}) {
  let sawLocked = false
  const until = Date.now() + 30000
  for (;;) {
    const r = await call('deleteInstance', vultr.instances.deleteInstance, { 'instance-id': id }, { allowError: true })
    if (r === undefined) break
    expect(r instanceof Error && /Server is currently locked/.test(r.message),
      `deleteInstance ${id}: unexpected reply ${r instanceof Error ? r.message : JSON.stringify(r)}`)
    expect(r.message === 'Internal Server Error: Unable to destroy server: Unable to remove VM: Server is currently locked',
      `deleteInstance ${id}: locked error reads ${JSON.stringify(r.message)}`)
    sawLocked = true
    if (Date.now() > until) fail(`instance ${id} stayed locked`)
    await sleep(200)
  }
  if (expectLocked) expect(sawLocked, `deleting ${id} right after creating it from a snapshot was not refused as locked`)
  const gone = await call('getInstance', vultr.instances.getInstance, { 'instance-id': id }, { allowError: true })
  expect(gone instanceof Error && /^Not Found/.test(gone.message), `instance ${id} still answers after delete: ${gone && gone.message}`)
}

const made = { instances: [], keys: [], snapshots: [] }

async function main () {
  // No key needed for plans and regions.
  const anon = VultrNode.initialize({ baseUrl })
  const plans = await call('listPlans', anon.plans.listPlans, { type: 'vc2' })
  expect(Array.isArray(plans.plans) && plans.plans.length > 0, 'listPlans: no plans')
  plans.plans.forEach((p) => shape('plan', p, PLAN))
  expect(plans.plans.every((p) => p.type === 'vc2'), 'listPlans type=vc2 returned other types')
  meta('listPlans', plans)
  const regions = await call('listRegions', anon.regions.listRegions)
  expect(regions.regions.some((r) => r.id === 'ewr'), 'listRegions: no ewr')
  regions.regions.forEach((r) => shape('region', r, { id: 'string', city: 'string', country: 'string', continent: 'string', options: 'strings' }))

  // A wrong key is refused with Vultr's message.
  const wrong = VultrNode.initialize({ apiKey: 'wrong-key', baseUrl })
  const unauth = await call('listInstances (wrong key)', wrong.instances.listInstances, undefined, { allowError: true })
  expect(unauth instanceof Error && unauth.message === 'Unauthorized: Invalid API token.',
    `wrong key: expected "Unauthorized: Invalid API token.", got ${unauth && unauth.message}`)

  // SSH key.
  const pub = opensshPublicKey('check@ephrun')
  const key = await call('createSshKey', vultr.sshKeys.createSshKey, { name: 'ephrun-check', ssh_key: pub })
  shape('createSshKey.ssh_key', key.ssh_key, SSH_KEY)
  made.keys.push(key.ssh_key.id)
  expect(key.ssh_key.ssh_key === pub, 'createSshKey: ssh_key not echoed')
  const gotKey = await call('getSshKey', vultr.sshKeys.getSshKey, { 'ssh-key-id': key.ssh_key.id })
  shape('getSshKey.ssh_key', gotKey.ssh_key, SSH_KEY)
  const keys = await call('listSshKeys', vultr.sshKeys.listSshKeys)
  meta('listSshKeys', keys)
  expect(keys.ssh_keys.some((k) => k.id === key.ssh_key.id), 'listSshKeys: new key missing')

  // Instance with os_id, sshkey_id, tags and base64 user-data.
  const userData = Buffer.from('#cloud-config\nssh_authorized_keys:\n  - ' + pub + '\n').toString('base64')
  const runTag = 'ephrun-run=check-' + process.pid
  const created = await call('createInstance', vultr.instances.createInstance, {
    region: 'ewr', plan: 'vc2-1c-1gb', os_id: '2136', sshkey_id: [key.ssh_key.id],
    tags: [runTag, 'ephrun=1'], user_data: userData, label: 'ephrun-check', hostname: 'ephrun-check'
  })
  shape('createInstance.instance', created.instance, INSTANCE)
  const id = created.instance.id
  made.instances.push(id)
  expect(typeof created.instance.default_password === 'string', 'createInstance: no default_password')
  expect(created.instance.status === 'pending', `createInstance: status ${created.instance.status}, expected pending`)
  expect(created.instance.os_id === 2136, `createInstance: os_id ${created.instance.os_id}`)
  expect(created.instance.tags.includes(runTag), 'createInstance: tags not kept')
  expect(created.instance.label === 'ephrun-check' && created.instance.region === 'ewr' && created.instance.plan === 'vc2-1c-1gb',
    'createInstance: label/region/plan not kept')

  const got = await call('getInstance', vultr.instances.getInstance, { 'instance-id': id })
  shape('getInstance.instance', got.instance, INSTANCE)
  expect(got.instance.id === id, 'getInstance: wrong id')
  expect(!('default_password' in got.instance), 'getInstance: default_password shown after create')
  const ud = await call('getInstanceUserData', vultr.instances.getInstanceUserData, { 'instance-id': id })
  expect(ud && ud.user_data && ud.user_data.data === userData, `getInstanceUserData: ${JSON.stringify(ud)}`)

  // Two more, for paging and the tag filter.
  for (let i = 0; i < 2; i++) {
    const r = await call('createInstance', vultr.instances.createInstance, {
      region: 'ams', plan: 'vc2-1c-2gb', os_id: '2136', tags: ['ephrun-page=' + process.pid], label: 'page-' + i
    })
    shape('createInstance.instance', r.instance, INSTANCE)
    made.instances.push(r.instance.id)
  }
  const byTag = await call('listInstances', vultr.instances.listInstances, { tag: runTag })
  meta('listInstances tag', byTag, 1)
  expect(byTag.instances.length === 1 && byTag.instances[0].id === id, `listInstances tag=${runTag}: ${JSON.stringify(byTag.instances.map((x) => x.id))}`)
  byTag.instances.forEach((x) => shape('listInstances.instances[]', x, INSTANCE))
  const byLabel = await call('listInstances', vultr.instances.listInstances, { label: 'page-1' })
  expect(byLabel.instances.length === 1 && byLabel.instances[0].label === 'page-1', 'listInstances label filter')
  const seen = []
  let cursor = ''
  let pages = 0
  do {
    const params = { per_page: '2' }
    if (cursor) params.cursor = cursor
    const page = await call('listInstances', vultr.instances.listInstances, params)
    meta('listInstances page', page, made.instances.length)
    expect(page.instances.length <= 2, `listInstances per_page=2 gave ${page.instances.length}`)
    page.instances.forEach((x) => seen.push(x.id))
    cursor = page.meta.links.next
    pages++
    expect(pages < 10, 'listInstances: paging does not end')
  } while (cursor)
  expect(pages === 2, `listInstances: ${pages} pages of 2 for 3 instances`)
  expect(seen.length === 3 && made.instances.every((x) => seen.includes(x)), `listInstances paging saw ${JSON.stringify(seen)}`)

  // Ready as the official tools wait for it.
  const ready = await waitInstance(id, (x) => x.status === 'active' && x.power_status === 'running' &&
    x.server_status === 'ok' && x.main_ip !== '0.0.0.0', 'active/running/ok')
  expect(/^127\.0\.\d+\.\d+$/.test(ready.main_ip), `main_ip ${ready.main_ip} is not a loopback address`)

  // Update: label and tags at once, plan later.
  await call('updateInstance', vultr.instances.updateInstance, { 'instance-id': id, label: 'renamed', tags: [runTag, 'phase=2'] })
  const upd = await call('getInstance', vultr.instances.getInstance, { 'instance-id': id })
  expect(upd.instance.label === 'renamed' && upd.instance.tags.includes('phase=2'), 'updateInstance: label/tags not applied')
  const upgrades = await call('getAvailableInstanceUpgrades', vultr.instances.getAvailableInstanceUpgrades, { 'instance-id': id })
  expect(upgrades && upgrades.upgrades && upgrades.upgrades.plans.includes('vc2-1c-2gb'), `upgrades: ${JSON.stringify(upgrades)}`)
  await call('updateInstance', vultr.instances.updateInstance, { 'instance-id': id, plan: 'vc2-1c-2gb' })
  await waitInstance(id, (x) => x.plan === 'vc2-1c-2gb' && x.ram === 2048 && x.status === 'active', 'resized to vc2-1c-2gb')

  // Halt and start.
  expect(await call('haltInstance', vultr.instances.haltInstance, { 'instance-id': id }) === undefined, 'haltInstance: expected no body')
  await waitInstance(id, (x) => x.power_status === 'stopped', 'stopped')
  expect(await call('startInstance', vultr.instances.startInstance, { 'instance-id': id }) === undefined, 'startInstance: expected no body')
  await waitInstance(id, (x) => x.power_status === 'running', 'running')

  // Snapshot, then an instance booted from it, deleted while still locked.
  const description = 'ephrun-check-' + process.pid
  const snap = await call('createSnapshot', vultr.snapshots.createSnapshot, { instance_id: id, description })
  shape('createSnapshot.snapshot', snap.snapshot, SNAPSHOT)
  made.snapshots.push(snap.snapshot.id)
  expect(snap.snapshot.status === 'pending', `createSnapshot: status ${snap.snapshot.status}`)
  const until = Date.now() + 20000
  for (;;) {
    const s = await call('getSnapshot', vultr.snapshots.getSnapshot, { 'snapshot-id': snap.snapshot.id })
    shape('getSnapshot.snapshot', s.snapshot, SNAPSHOT)
    if (s.snapshot.status === 'complete') break
    if (Date.now() > until) fail('snapshot never complete')
    await sleep(150)
  }
  const fromSnap = await call('createInstance', vultr.instances.createInstance, {
    region: 'ewr', plan: 'vc2-1c-1gb', snapshot_id: snap.snapshot.id, tags: [runTag]
  })
  shape('createInstance(snapshot).instance', fromSnap.instance, INSTANCE)
  made.instances.push(fromSnap.instance.id)
  await deleteInstance(fromSnap.instance.id, { expectLocked: true })
  made.instances = made.instances.filter((x) => x !== fromSnap.instance.id)

  const snaps = await call('listSnapshots', vultr.snapshots.listSnapshots, { description })
  meta('listSnapshots', snaps, 1)
  expect(snaps.snapshots.length === 1 && snaps.snapshots[0].id === snap.snapshot.id, 'listSnapshots description filter')
  snaps.snapshots.forEach((s) => shape('listSnapshots.snapshots[]', s, SNAPSHOT))
  expect(await call('deleteSnapshot', vultr.snapshots.deleteSnapshot, { 'snapshot-id': snap.snapshot.id }) === undefined,
    'deleteSnapshot: expected no body')
  made.snapshots = []
  const goneSnap = await call('getSnapshot', vultr.snapshots.getSnapshot, { 'snapshot-id': snap.snapshot.id }, { allowError: true })
  expect(goneSnap instanceof Error && /^Not Found/.test(goneSnap.message), 'deleted snapshot still answers')

  // Delete the rest, then the key.
  for (const x of [...made.instances]) {
    await deleteInstance(x)
    made.instances = made.instances.filter((y) => y !== x)
  }
  expect(await call('deleteSshKey', vultr.sshKeys.deleteSshKey, { 'ssh-key-id': key.ssh_key.id }) === undefined,
    'deleteSshKey: expected no body')
  made.keys = []
  const after = await call('listSshKeys', vultr.sshKeys.listSshKeys)
  expect(!after.ssh_keys.some((k) => k.id === key.ssh_key.id), 'deleted ssh key still listed')
  const left = await call('listInstances', vultr.instances.listInstances, { tag: runTag })
  expect(left.instances.length === 0, 'instances left after deleting')
}

async function cleanup () {
  for (const s of made.snapshots) await vultr.snapshots.deleteSnapshot({ 'snapshot-id': s })
  for (const i of made.instances) {
    for (let n = 0; n < 100; n++) {
      const r = await vultr.instances.deleteInstance({ 'instance-id': i })
      if (!(r instanceof Error) || /^Not Found/.test(r.message)) break
      await sleep(200)
    }
  }
  for (const k of made.keys) await vultr.sshKeys.deleteSshKey({ 'ssh-key-id': k })
}

main().then(
  () => {
    console.log(`check: ok (${calls} calls, ${((Date.now() - started) / 1000).toFixed(1)} s)`)
  },
  async (err) => {
    console.error(`check: FAILED: ${err instanceof Mismatch ? err.message : err.stack}`)
    try {
      await cleanup()
    } catch (e) {
      console.error(`check: cleanup failed too: ${e.message}`)
    }
    process.exitCode = 1
  }
)
