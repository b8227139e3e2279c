"""The provider's limits, shared by every worker on every host through Redis.

Celery's own rate_limit counts per worker process, so ten workers would send ten times
the rate. Here one token bucket and one set of in-flight slots per API key live in Redis,
each changed only by a Lua script (atomic, and timed by Redis's own clock).

- Rate: a token bucket that may go into debt. Each caller takes a token and is told how
  long to wait for it; callers arriving together are spread evenly instead of all retrying
  at the same instant. The caller then runs after that wait without asking again.
- Slots: a job takes a slot before it is submitted and gives it back when its generation
  ends at the provider. A job that finds none free parks its submit message in Redis and
  its task ends (no worker waits); each freed slot is handed to the next parked job, single
  jobs first, then batch jobs, and its message goes back on the queue.
"""

from __future__ import annotations

import hashlib
import time

import redis

from producer import names
from producer.messages import task_message
from producer.names import Keys
from producer.settings import Settings

INTERACTIVE = "interactive"
BULK = "bulk"

_TAKE_TOKEN = """
pcall(redis.replicate_commands)  -- Redis < 7 needs it for TIME before writes
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or burst)
local since = tonumber(redis.call('HGET', KEYS[1], 'ts') or now)
tokens = math.min(burst, tokens + (now - since) * rate) - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
if tokens >= 0 then return '0' end
return tostring(-tokens / rate)
"""

# KEYS: in-flight set, this lane's waiting list. ARGV: job id, cap, now, stale-before,
# parked entry ("job_id|message"). Returns 1 when the job holds a slot, 0 when parked.
_TAKE_SLOT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[5])
return 0
"""

# KEYS: in-flight set, interactive waiting, bulk waiting, interactive queue, bulk queue.
# ARGV: job id, cap, now. Frees the job's slot and hands free slots to parked jobs; their
# messages go to the consuming end of their queue, so they run next. Returns how many.
_GIVE_SLOT = """
redis.call('ZREM', KEYS[1], ARGV[1])
local handed = 0
while redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) do
  local entry, queue = redis.call('LPOP', KEYS[2]), KEYS[4]
  if not entry then entry, queue = redis.call('LPOP', KEYS[3]), KEYS[5] end
  if not entry then break end
  local sep = string.find(entry, '|', 1, true)
  redis.call('ZADD', KEYS[1], ARGV[3], string.sub(entry, 1, sep - 1))
  redis.call('RPUSH', queue, string.sub(entry, sep + 1))
  handed = handed + 1
end
return handed
"""


def account_of(api_key: str) -> str:
    """The name limits are kept under for an API key: a fingerprint, never the key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class ProviderLimits:
    """The shared rate limit and in-flight cap for one API key.

    Args:
        client: the Redis holding job records.
        settings: rate_limit_per_s, rate_burst, max_in_flight, queue, key prefix.
    """

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.redis = client
        keys = Keys(settings.key_prefix)
        account = account_of(settings.api_key.get_secret_value())
        self.bucket = keys.rate(account)
        self.in_flight = keys.in_flight(account)
        self.waiting = {lane: keys.waiting(account, lane) for lane in (INTERACTIVE, BULK)}
        self.queues = {INTERACTIVE: settings.queue, BULK: names.bulk_queue(settings.queue)}
        self._take_token = client.register_script(_TAKE_TOKEN)
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._give_slot = client.register_script(_GIVE_SLOT)
        # A slot whose job vanished (it should not happen: every end gives its slot back)
        # is reclaimed once it is older than any job can be.
        self.stale_after_s = settings.deadline_s + 2 * settings.visibility_timeout_s

    def wait_for_token_s(self) -> float:
        """Take one request's token; returns how long to wait before sending (0: now)."""
        if self.settings.rate_limit_per_s is None:
            return 0.0
        wait = self._take_token(
            keys=[self.bucket], args=[self.settings.rate_limit_per_s, self.settings.rate_burst]
        )
        return float(wait)

    def take_slot(self, job_id: str, lane: str) -> bool:
        """True when the job holds a provider slot; False when it was parked to wait."""
        if self.settings.max_in_flight is None:
            return True
        now = time.time()
        parked = f"{job_id}|{task_message(names.SUBMIT, [job_id], self.queues[lane])}"
        return bool(
            self._take_slot(
                keys=[self.in_flight, self.waiting[lane]],
                args=[job_id, self.settings.max_in_flight, now, now - self.stale_after_s, parked],
            )
        )

    def give_slot(self, job_id: str) -> int:
        """Give the job's slot back (a no-op if it holds none); returns jobs started."""
        if self.settings.max_in_flight is None:
            return 0
        return int(
            self._give_slot(
                keys=[
                    self.in_flight,
                    self.waiting[INTERACTIVE],
                    self.waiting[BULK],
                    self.queues[INTERACTIVE],
                    self.queues[BULK],
                ],
                args=[job_id, self.settings.max_in_flight, time.time()],
            )
        )
