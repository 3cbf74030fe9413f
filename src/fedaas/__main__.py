from fedaas.cli import main

main()
