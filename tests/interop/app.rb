# frozen_string_literal: true

# Job classes for tests/test_interop_sidekiq.py: loaded by the real Sidekiq server
# (`sidekiq -r tests/interop/app.rb`) and by the enqueueing client
# (`ruby -r tests/interop/app.rb -e 'SleepJob.perform_async(6)'`). Both read REDIS_URL.
require "sidekiq"

# Sleeps, then counts itself: proves a job running at quiet time is allowed to finish.
class SleepJob
  include Sidekiq::Worker

  def perform(seconds)
    sleep(Float(seconds))
    Sidekiq.redis { |conn| conn.incr("sample:slept") }
  end
end

# Counts itself: must never run on a quiet process.
class RecordJob
  include Sidekiq::Worker

  def perform
    Sidekiq.redis { |conn| conn.incr("sample:ran") }
  end
end
