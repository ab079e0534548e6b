from qrdeploy.cli import entry

entry()
