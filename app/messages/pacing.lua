-- Per-client send pacing: plan slots and grant sends atomically. Used by workers/pacing.py.
--
-- KEYS[1]  R: reservations, the plan of when waiting messages wake up: member = token, score = slot ms
-- KEYS[2]  G: grants, the sends that happened (or are happening): member = token!nonce, score = grant ms
-- ARGV     now_ms, per_minute, per_hour, per_day, min_gap_ms, max_gap_ms, pad_ms, nonce,
--          grant (1: grant due tokens; 0: only reserve), call_pad_ms, then one (token, rand) pair per
--          token; rand in [0, 1) picks the random gap (passed in so the script stays deterministic)
-- Returns  for each token: {ms, granted (1|0), member}: the grant time, or the slot to wait for
--
-- The limits are enforced on G: a send is granted at `now` only if it is at least min_gap + call_pad
-- after the latest grant (when min_gap > 0) and no window of W + call_pad ms (W = 1 min / 1 h / 1 day)
-- would hold more than its limit. call_pad covers the moments between a grant and the transport call,
-- so the transport calls keep the limits exactly. R only spreads the wake-ups: a new slot is the
-- earliest time after every planned and granted point that keeps a random gap (min..max, at least
-- min_gap + pad) and windows of W + pad over both; pad > call_pad, so a send that went a little late
-- does not push back the next one. A job that arrives at or after its slot is granted if G allows it
-- now; otherwise its reservation moves to the first moment G allows (it keeps its place: lateness
-- never sends a message to the back of the queue).
local R, G = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local limits = {{60000, tonumber(ARGV[2])}, {3600000, tonumber(ARGV[3])}, {86400000, tonumber(ARGV[4])}}
local min_gap = tonumber(ARGV[5])
local max_gap = tonumber(ARGV[6])
local pad = tonumber(ARGV[7])
local nonce = ARGV[8]
local grant = ARGV[9] == '1'
local call_pad = tonumber(ARGV[10])
local day = 86400000 + pad
local grant_gap = 0
if min_gap > 0 then grant_gap = min_gap + call_pad end

-- points that can no longer fall in any window of a time >= now
redis.call('ZREMRANGEBYSCORE', G, '-inf', now - day)
redis.call('ZREMRANGEBYSCORE', R, '-inf', now - day)

local function fmt(x) return string.format('%d', x) end

local function latest(keys)
    local best = nil
    for _, key in ipairs(keys) do
        local got = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
        if got[2] then
            local v = tonumber(got[2])
            if best == nil or v > best then best = v end
        end
    end
    return best
end

-- the earliest t >= from that is `gap` after the latest point of `keys` and leaves room in every
-- window; every point of `keys` is <= t, so "in the window ending at t" is "> t - size"
local function earliest(keys, from, gap, extra)
    local t = from
    local last = latest(keys)
    if last ~= nil and last + gap > t then t = last + gap end
    local moved = true
    while moved do
        moved = false
        for _, w in ipairs(limits) do
            local size, limit = w[1] + extra, w[2]
            local lower = '(' .. fmt(t - size)
            local n = 0
            for _, key in ipairs(keys) do n = n + redis.call('ZCOUNT', key, lower, '+inf') end
            if n >= limit then
                -- the (n - limit + 1) oldest points of the window must leave it first
                local scores = {}
                for _, key in ipairs(keys) do
                    local got = redis.call('ZRANGEBYSCORE', key, lower, '+inf', 'WITHSCORES', 'LIMIT', 0, n - limit + 1)
                    for j = 2, #got, 2 do scores[#scores + 1] = tonumber(got[j]) end
                end
                table.sort(scores)
                t = scores[n - limit + 1] + size
                moved = true
            end
        end
    end
    return t
end

local out = {}
local horizon = now
for i = 11, #ARGV, 2 do
    local token, rand = ARGV[i], tonumber(ARGV[i + 1])
    local at = redis.call('ZSCORE', R, token)
    if at then
        at = tonumber(at)
    else
        local gap = min_gap + math.floor(rand * (max_gap - min_gap + 1))
        if gap > max_gap then gap = max_gap end
        if min_gap > 0 and gap < min_gap + pad then gap = min_gap + pad end
        at = earliest({R, G}, now, gap, pad)
        redis.call('ZADD', R, at, token)
    end
    local granted, member = 0, token
    if grant and at <= now then
        local allowed = earliest({G}, now, grant_gap, call_pad)
        if allowed <= now then
            member = token .. '!' .. nonce .. ':' .. i
            redis.call('ZREM', R, token)
            redis.call('ZADD', G, now, member)
            at, granted = now, 1
        else
            at = allowed
            redis.call('ZADD', R, at, token)
        end
    end
    if at > horizon then horizon = at end
    out[#out + 1] = {fmt(at), granted, member}
end
local ttl = math.floor(horizon - now + day + 60000)
redis.call('PEXPIRE', R, ttl)
redis.call('PEXPIRE', G, ttl)
return out
