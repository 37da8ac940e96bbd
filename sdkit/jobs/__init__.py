"""Recipe files as jobs: `parse` reads a file into validated jobs (defaults, sweeps, `${...}`, `--set`, limits),
`run` executes them (one pipeline cache, distributed splitting, sweep grids), `dryrun` checks them without weights.

    jobs = [job for f in files for job in parse.load_file(f, sets)]
    run.run_jobs(jobs)
"""
