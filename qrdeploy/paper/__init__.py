"""`qrdeploy reproduce`: the paper's experiment as a cached pipeline, its claims and its report."""
