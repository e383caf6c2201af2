// dlaas page: the jobs of this tab, their images and what is known of each; no DOM here.

const JOB_MAX_FILES = 500; // a bigger drop becomes several jobs
const JOB_MAX_BYTES = 256 * 1024 * 1024;

let jobCounter = 0;
export const jobs = [];

/** One upload request: its images, their states and results, and its view. */
export function createJob(files) {
  jobCounter += 1;
  const job = {
    number: jobCounter,
    id: null,
    status: "uploading", // uploading | running | complete | failed
    startedAt: performance.now(),
    endedAt: null,
    retries: 0,
    byImageId: new Map(),
    summaryPending: false,
    cancelling: false,
    items: files.map((file, index) => ({
      index,
      file,
      name: file.name || `image ${index + 1}`,
      imageId: null,
      state: "uploading",
      progress: 0,
      result: null,
      error: null,
      view: null,
    })),
    view: null,
  };
  jobs.push(job);
  return job;
}

export function counts(job) {
  const c = { total: job.items.length, done: 0, failed: 0, cancelled: 0, waiting: 0 };
  for (const item of job.items) {
    if (item.state === "done") c.done += 1;
    else if (item.state === "failed") c.failed += 1;
    else if (item.state === "cancelled") c.cancelled += 1;
    else c.waiting += 1;
  }
  return c;
}

export function itemById(job, imageId) {
  return job.byImageId.get(imageId) || null;
}

/** Split a big selection into jobs the server takes in one request. */
export function chunkFiles(files) {
  const chunks = [];
  let current = [];
  let bytes = 0;
  for (const file of files) {
    if (current.length && (current.length >= JOB_MAX_FILES || bytes + file.size > JOB_MAX_BYTES)) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(file);
    bytes += file.size;
  }
  if (current.length) chunks.push(current);
  return chunks;
}
