from learnloop.cli.main import main

main()
