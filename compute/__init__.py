"""
Compute: the course's distributed pi.  A coordinator (C{twistd compute})
takes jobs over XML-RPC, splits them into chunks and leases the chunks to
workers (C{compute-worker}, over AMP) or to a Dask cluster; see
docs/compute.md.
"""
