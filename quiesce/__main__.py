from quiesce.cli.app import main

main()
