from twisted.application.service import ServiceMaker

compute = ServiceMaker("Compute coordinator", "compute.tap", "Distributed pi: XML-RPC jobs, AMP workers, Dask", "compute")
