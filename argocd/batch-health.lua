-- Health of a modelsmith batch run (DataPipeline, PretrainJob, FineTune, QuantizeJob).
-- Reads what the operator writes: status.observedGeneration and metav1 conditions
-- (Ready, Progressing, Succeeded, Failed, Suspended, Degraded). Lua 5.1 with Argo CD's
-- libraries only (base, table, os): no string or math library.
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

local function is_true(c)
  return c ~= nil and c.status == "True"
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

local conditions = status.conditions
local ready = condition(conditions, "Ready")

-- A spec change the running Job cannot take: the run goes on with the previous spec and
-- observedGeneration stays behind on purpose, so this comes before the generation check.
local degraded = condition(conditions, "Degraded")
if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

-- InvalidSpec, UpstreamFailed and JobFailed all set Failed=True and Ready=False.
local failed = condition(conditions, "Failed")
if is_true(failed) then
  hs.status = "Degraded"
  hs.message = text(failed, text(ready, "Failed"))
  return hs
end
if ready ~= nil and ready.status == "False"
    and (ready.reason == "InvalidSpec" or ready.reason == "UpstreamFailed" or ready.reason == "JobFailed") then
  hs.status = "Degraded"
  hs.message = text(ready, ready.reason)
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = text(ready, "Failed")
  return hs
end

local succeeded = condition(conditions, "Succeeded")
if is_true(succeeded) then
  hs.status = "Healthy"
  if is_true(ready) then
    hs.message = text(ready, "Succeeded")
  else
    hs.message = text(succeeded, "Succeeded")
  end
  return hs
end

-- The Suspended condition appears once the Job exists; spec.suspend is what the user
-- asked for while the run still waits for its inputs.
local suspended = condition(conditions, "Suspended")
if is_true(suspended) then
  hs.status = "Suspended"
  hs.message = text(suspended, "Suspended")
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true; " .. text(ready, "not started")
  return hs
end

-- Pending or running: waiting for inputs, for pods, or workers at work.
hs.status = "Progressing"
hs.message = text(ready, text(condition(conditions, "Progressing"), "Running"))
return hs
