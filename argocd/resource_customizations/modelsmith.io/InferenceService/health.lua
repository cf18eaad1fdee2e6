-- Health of a modelsmith InferenceService. Reads what the operator writes:
-- status.observedGeneration, metav1 conditions (Ready, Progressing, RolledBack) and
-- status.canary (the latest rollout: stage Shadow, Progressing, Paused, Promoted or
-- RolledBack). Lua 5.1 with Argo CD's libraries only (base, table, os).
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")

-- A spec the operator refused (reason InvalidSpec, phase Failed).
if status.phase == "Failed" or (ready ~= nil and ready.status == "False" and ready.reason == "InvalidSpec") then
  hs.status = "Degraded"
  hs.message = text(ready, "Failed")
  return hs
end
local degraded = condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end

-- Nothing serves yet: the model's upstream is not ready, or the stable revision's
-- replicas are not available.
if ready == nil or ready.status ~= "True" then
  hs.status = "Progressing"
  hs.message = text(ready, "Waiting for the stable revision to be ready")
  return hs
end

local canary = status.canary
-- status.canaryRevision is set exactly while a rollout is under way.
if canary ~= nil and status.canaryRevision ~= nil then
  local message = text(condition(conditions, "Progressing"), canary.message)
  if message == nil or message == "" then
    message = "canary " .. tostring(canary.revision) .. " at " .. tostring(canary.weight) .. "%"
  end
  if canary.stage == "Paused" then
    -- Inconclusive analyses wait for a manual Promote or Abort; an unreachable
    -- Prometheus pauses until it answers again or the progress deadline rolls back.
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = message
  return hs
end

if canary ~= nil and canary.stage == "RolledBack" then
  local message = text(condition(conditions, "RolledBack"), canary.message)
  if (message == nil or message == "") and canary.history ~= nil and #canary.history > 0 then
    message = canary.history[#canary.history].message
  end
  if message == nil or message == "" then
    message = "revision " .. tostring(canary.revision) .. " was rolled back"
  end
  hs.status = "Degraded"
  hs.message = message
  return hs
end

hs.status = "Healthy"
hs.message = text(ready, "Ready")
return hs
