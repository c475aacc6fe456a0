"""The job store: Redis keys, Lua scripts, the job codec, messages and views."""
